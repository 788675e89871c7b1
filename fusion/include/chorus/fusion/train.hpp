#pragma once

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>

#include "chorus/fusion/models.hpp"

/// Training and evaluation of zoo models on in-memory tensors.
namespace chorus::fusion {

/// The optimiser `train` uses.
enum class Optimizer { kAdam, kAdamW };

/// What `train` reports after each epoch.
struct EpochReport {
  std::int64_t epoch = 0;              ///< 1-based.
  std::int64_t epochs = 0;             ///< Planned epochs.
  double train_loss = 0;               ///< Mean loss over the epoch's batches.
  std::optional<double> val_accuracy;  ///< When validation data was given.
  double seconds = 0;                  ///< Wall time of the epoch.
};

/// Options of `train`.
struct TrainOptions {
  TORCH_ARG(std::int64_t, epochs) = 10;
  TORCH_ARG(std::int64_t, batch_size) = 128;
  /// Peak learning rate.
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, weight_decay) = 0.0;
  TORCH_ARG(Optimizer, optimizer) = Optimizer::kAdam;
  /// Cosine decay of the learning rate to zero over all steps.
  TORCH_ARG(bool, cosine) = true;
  /// Stop after this many epochs without a better validation accuracy and
  /// restore the best weights; 0 disables early stopping (the best weights
  /// are still restored when validation data is given).
  TORCH_ARG(std::int64_t, patience) = 0;
  /// Label smoothing for hard labels.
  TORCH_ARG(double, label_smoothing) = 0.0;
  /// Seeds shuffling and dropout: a generator of the training's own, so
  /// torch's default generator is neither read nor changed.
  TORCH_ARG(std::uint64_t, seed) = 0;
  /// Torch intra-op threads for the duration of training; 0 keeps the
  /// process's setting.
  TORCH_ARG(int, threads) = 0;
  /// Where training runs (see device.hpp): the model and each batch move
  /// there; inputs and targets stay where they are, and the model is back
  /// on the CPU when `train` returns.
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
  /// On a terminal (progress::enabled()), a live bar with this label:
  /// examples, epoch, running loss, rate and ETA. Empty: none.
  TORCH_ARG(std::string, progress) = "";
  /// Called after every epoch (progress reporting).
  TORCH_ARG(std::function<void(const EpochReport&)>, on_epoch) = nullptr;
  /// Checked before every batch: once a stop is requested, training throws
  /// `chorus::Error` (CANCELLED) and the model is left as it was then.
  TORCH_ARG(std::stop_token, stop) = {};
};

/// Throws `chorus::Error` (CANCELLED) naming `what` when `stop` was
/// requested: the cancellation point of every training loop.
void throw_if_stopped(const std::stop_token& stop, const char* what);

/// What `train` did.
struct TrainResult {
  std::int64_t epochs_run = 0;
  std::int64_t best_epoch = 0;  ///< Epoch whose weights were kept.
  double final_train_loss = 0;
  std::optional<double> best_val_accuracy;
  double seconds = 0;
};

/// Trains `model` on inputs `x` [N, ...] and targets `y`: int64 labels [N]
/// (cross-entropy) or float probabilities [N, C] (soft cross-entropy, i.e.
/// KL to the targets up to a constant, for distillation). With `val_x` and
/// `val_y` it measures validation accuracy (against argmax of soft targets)
/// each epoch, early-stops per `options.patience` and keeps the best
/// weights. Throws `chorus::Error` (INVALID_ARGUMENT) on mismatched shapes.
TrainResult train(ClassifierImpl& model, const torch::Tensor& x,
                  const torch::Tensor& y, const TrainOptions& options,
                  const torch::Tensor& val_x = {},
                  const torch::Tensor& val_y = {});

/// Softmax probabilities [N, classes] of `model` on `x`, in eval mode,
/// without gradients, `batch_size` inputs at a time, on the device the
/// model's parameters are on (each batch moves there); the result is on the
/// CPU.
torch::Tensor predict_proba(ClassifierImpl& model, const torch::Tensor& x,
                            std::int64_t batch_size = 256);

/// Fraction of rows of `scores` [N, C] whose argmax equals `labels` [N]
/// (int64), or the argmax of `labels` when it is [N, C].
double accuracy(const torch::Tensor& scores, const torch::Tensor& labels);

/// Runs `job(i, threads)` for every i in [0, n), using `workers` cores: on
/// a few cores, several small models trained or evaluated side by side, one
/// torch thread each, use them better than one at a time on all of them.
/// The first n − n mod workers jobs run on `workers` threads at once (each
/// taking the next job when it finishes one) with threads = 1; the last
/// n mod workers, which could not keep every core busy that way, run after
/// them one at a time with threads = workers. The calling thread waits;
/// with `workers` ≤ 1 every job runs on it in order, with its torch threads
/// as they are. A job
/// sets its torch threads from `threads` (`TrainOptions::threads`), or just
/// runs: the thread it is called on is set to `threads` already. The first
/// exception a job throws is rethrown once every worker has stopped; jobs
/// not yet started are skipped after it.
void run_jobs(std::int64_t n, int workers,
              const std::function<void(std::int64_t, int)>& job);

/// Sets torch's intra-op thread count for the lifetime of the guard.
class ThreadGuard {
 public:
  explicit ThreadGuard(int threads);
  ~ThreadGuard();
  ThreadGuard(const ThreadGuard&) = delete;
  ThreadGuard& operator=(const ThreadGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace chorus::fusion
