#include "chorus/fusion/train.hpp"

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <mutex>
#include <numbers>
#include <optional>
#include <thread>

#include "chorus/core/error.hpp"
#include "chorus/core/progress.hpp"
#include "chorus/fusion/optim.hpp"
#include "chorus/fusion/random.hpp"

namespace chorus::fusion {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(ClassifierImpl& model,
                                                        const TrainOptions& o) {
  if (o.optimizer() == Optimizer::kAdamW) {
    return std::make_unique<FusedAdamW>(
        model.parameters(),
        torch::optim::AdamWOptions(o.lr()).weight_decay(o.weight_decay()));
  }
  return std::make_unique<FusedAdam>(
      model.parameters(),
      torch::optim::AdamOptions(o.lr()).weight_decay(o.weight_decay()));
}

// A deep copy of parameters and buffers, to restore the best epoch.
std::vector<torch::Tensor> snapshot(ClassifierImpl& model) {
  std::vector<torch::Tensor> out;
  torch::NoGradGuard no_grad;
  for (const auto& p : model.parameters()) out.push_back(p.detach().clone());
  for (const auto& b : model.buffers()) out.push_back(b.detach().clone());
  return out;
}

void restore(ClassifierImpl& model, const std::vector<torch::Tensor>& saved) {
  torch::NoGradGuard no_grad;
  std::size_t i = 0;
  for (auto& p : model.parameters()) p.copy_(saved[i++]);
  for (auto& b : model.buffers()) b.copy_(saved[i++]);
}

torch::Tensor loss_fn(const torch::Tensor& logits, const torch::Tensor& y,
                      double label_smoothing) {
  if (y.scalar_type() == torch::kLong) {
    return torch::nn::functional::cross_entropy(
        logits, y,
        torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(
            label_smoothing));
  }
  return -(y * torch::log_softmax(logits, /*dim=*/1)).sum(1).mean();
}

// Lends `model` a dropout generator for the guard's lifetime.
class NoiseGuard {
 public:
  NoiseGuard(ClassifierImpl& model, const at::Generator& gen)
      : model_(model), previous_(model.noise()) {
    model_.set_noise(gen);
  }
  ~NoiseGuard() { model_.set_noise(previous_); }
  NoiseGuard(const NoiseGuard&) = delete;
  NoiseGuard& operator=(const NoiseGuard&) = delete;

 private:
  ClassifierImpl& model_;
  std::optional<at::Generator> previous_;
};

}  // namespace

ThreadGuard::ThreadGuard(int threads) : previous_(torch::get_num_threads()) {
  if (threads > 0) torch::set_num_threads(threads);
}

ThreadGuard::~ThreadGuard() {
  if (torch::get_num_threads() != previous_) torch::set_num_threads(previous_);
}

void run_jobs(std::int64_t n, int workers,
              const std::function<void(std::int64_t, int)>& job) {
  if (workers <= 1) {
    const int threads = torch::get_num_threads();
    for (std::int64_t i = 0; i < n; ++i) job(i, threads);
    return;
  }
  // Side by side: as many jobs as keep every worker busy.
  const std::int64_t side_by_side = n - n % workers;
  std::atomic<std::int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mutex;
  auto work = [&] {
    ThreadGuard one(1);
    for (auto i = next++; i < side_by_side && !failed; i = next++) {
      try {
        job(i, 1);
      } catch (...) {
        std::lock_guard lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  if (side_by_side > 0) {
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) threads.emplace_back(work);
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
  }
  // The rest, one at a time on every core.
  ThreadGuard all(workers);
  for (std::int64_t i = side_by_side; i < n; ++i) job(i, workers);
}

void throw_if_stopped(const std::stop_token& stop, const char* what) {
  if (stop.stop_requested()) fail(Code::kCancelled, "{} cancelled", what);
}

TrainResult train(ClassifierImpl& model, const torch::Tensor& x,
                  const torch::Tensor& y, const TrainOptions& options,
                  const torch::Tensor& val_x, const torch::Tensor& val_y) {
  CHORUS_CHECK(x.defined() && y.defined() && x.size(0) == y.size(0),
               "train: {} inputs but {} targets", x.defined() ? x.size(0) : 0,
               y.defined() ? y.size(0) : 0);
  CHORUS_CHECK(x.size(0) > 0, "train: no training examples");
  CHORUS_CHECK(
      y.scalar_type() == torch::kLong ||
          (y.is_floating_point() && y.dim() == 2),
      "train: targets must be int64 labels [N] or probabilities [N, C]");
  CHORUS_CHECK(options.epochs() > 0 && options.batch_size() > 0,
               "train: epochs and batch_size must be positive");
  const bool validate = val_x.defined() && val_y.defined();
  if (validate) {
    CHORUS_CHECK(val_x.size(0) == val_y.size(0) && val_x.size(0) > 0,
                 "train: {} validation inputs but {} targets", val_x.size(0),
                 val_y.size(0));
  }

  ThreadGuard threads(options.threads());
  const auto device = options.device();
  // Back on the CPU however training ends.
  struct OnDevice {
    ClassifierImpl& model;
    OnDevice(ClassifierImpl& m, c10::Device d) : model(m) { model.to(d); }
    ~OnDevice() { model.to(c10::Device(c10::kCPU)); }
  } on_device(model, device);
  // Shuffling and dropout draw from the training's own generator.
  auto gen = make_generator(options.seed());
  NoiseGuard noise(model, gen);
  const auto start = Clock::now();
  auto optimizer = make_optimizer(model, options);
  const std::int64_t n = x.size(0);
  const std::int64_t bs = options.batch_size();
  const std::int64_t steps_per_epoch = (n + bs - 1) / bs;
  const double total_steps =
      static_cast<double>(steps_per_epoch * options.epochs());

  TrainResult result;
  std::vector<torch::Tensor> best;
  std::int64_t step = 0, since_best = 0;
  // On a terminal: examples seen out of all epochs', with the epoch and the
  // running loss.
  std::optional<progress::Bar> bar;
  if (!options.progress().empty() && progress::enabled()) {
    bar.emplace(options.progress(), static_cast<double>(n * options.epochs()),
                "examples");
  }
  for (std::int64_t epoch = 1; epoch <= options.epochs(); ++epoch) {
    const auto epoch_start = Clock::now();
    model.train();
    auto order = torch::randperm(n, gen, torch::kLong);
    double loss_sum = 0;
    for (std::int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      throw_if_stopped(options.stop(), "training");
      if (options.cosine()) {
        const double lr =
            options.lr() * 0.5 *
            (1.0 + std::cos(std::numbers::pi * step / total_steps));
        for (auto& group : optimizer->param_groups())
          group.options().set_lr(lr);
      }
      auto idx = order.slice(0, b * bs, std::min(n, (b + 1) * bs));
      auto xb = x.index_select(0, idx).to(device);
      auto yb = y.index_select(0, idx).to(device);
      optimizer->zero_grad();
      auto loss = loss_fn(model.forward(xb), yb, options.label_smoothing());
      loss.backward();
      optimizer->step();
      loss_sum += loss.item<double>();
      if (bar) {
        bar->update(
            static_cast<double>(std::min(n, (b + 1) * bs) + (epoch - 1) * n),
            fmt::format("epoch {}/{} loss {:.4f}", epoch, options.epochs(),
                        loss_sum / (b + 1)));
      }
    }
    EpochReport report{.epoch = epoch,
                       .epochs = options.epochs(),
                       .train_loss = loss_sum / steps_per_epoch};
    result.epochs_run = epoch;
    result.final_train_loss = report.train_loss;
    if (validate) {
      report.val_accuracy = accuracy(predict_proba(model, val_x), val_y);
      if (!result.best_val_accuracy ||
          *report.val_accuracy > *result.best_val_accuracy) {
        result.best_val_accuracy = report.val_accuracy;
        result.best_epoch = epoch;
        best = snapshot(model);
        since_best = 0;
      } else {
        ++since_best;
      }
    } else {
      result.best_epoch = epoch;
    }
    report.seconds = seconds_since(epoch_start);
    if (options.on_epoch()) options.on_epoch()(report);
    if (options.patience() > 0 && since_best >= options.patience()) break;
  }
  if (!best.empty() && result.best_epoch != result.epochs_run) {
    restore(model, best);
  }
  model.eval();
  result.seconds = seconds_since(start);
  return result;
}

torch::Tensor predict_proba(ClassifierImpl& model, const torch::Tensor& x,
                            std::int64_t batch_size) {
  CHORUS_CHECK(batch_size > 0, "predict: batch_size must be positive");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto params = model.parameters();
  const auto device =
      params.empty() ? c10::Device(c10::kCPU) : params.front().device();
  std::vector<torch::Tensor> parts;
  for (std::int64_t i = 0; i < x.size(0); i += batch_size) {
    auto xb = x.slice(0, i, std::min(x.size(0), i + batch_size)).to(device);
    parts.push_back(torch::softmax(model.forward(xb), /*dim=*/1).cpu());
  }
  if (was_training) model.train();
  if (parts.empty()) return torch::empty({0, 0});
  return torch::cat(parts);
}

double accuracy(const torch::Tensor& scores, const torch::Tensor& labels) {
  CHORUS_CHECK(scores.dim() == 2 && scores.size(0) == labels.size(0),
               "accuracy: {} score rows but {} labels", scores.size(0),
               labels.size(0));
  if (scores.size(0) == 0) return 0.0;
  auto truth = labels.dim() == 2 ? labels.argmax(1) : labels;
  return scores.argmax(1).eq(truth).to(torch::kDouble).mean().item<double>();
}

}  // namespace chorus::fusion
