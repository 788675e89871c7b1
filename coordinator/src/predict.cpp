#include "chorus/coordinator/predict.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <algorithm>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <thread>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/version.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/protocol/channel.hpp"
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/tensor_codec.hpp"

namespace chorus::coordinator {
namespace {

// Class names for `n` outputs: Fashion-MNIST's for 10, numbers otherwise.
std::vector<std::string> output_names(std::int64_t n) {
  auto names = n == 10 ? fusion::fashion_mnist_class_names()
                       : std::vector<std::string>{};
  for (auto c = static_cast<std::int64_t>(names.size()); c < n; ++c) {
    names.push_back(std::to_string(c));
  }
  return names;
}

// A tae global model, on the adapted task or every output under the prior.
void predict_tae(const PredictOptions& o, const torch::Tensor& images,
                 PredictReport& report, torch::Tensor& probs) {
  auto model = fusion::TaeModel::load(o.model);
  CHORUS_CHECK(images[0].numel() == model.input_dim(),
               "tae model '{}' takes inputs of {} values, the images have {}",
               o.model.string(), model.input_dim(), images[0].numel());
  auto task = o.adapted.empty() ? model.default_task()
                                : model.read_adapted_task(o.adapted);
  fusion::ThreadGuard guard(o.threads);
  probs = model.predict(images, task);
  report.source = "model " + o.model.string();
  report.algorithm = "tae (" + task.source + ")";
  auto names =
      model.labels().size() == static_cast<std::size_t>(model.outputs())
          ? model.labels()
          : output_names(model.outputs());
  if (task.classes.empty()) {
    report.class_names = names;
  } else {
    for (auto c : task.classes)
      report.class_names.push_back(names[static_cast<std::size_t>(c)]);
    report.class_labels = task.classes;
  }
}

void predict_locally(const PredictOptions& o, const torch::Tensor& images,
                     PredictReport& report, torch::Tensor& probs) {
  if (fusion::TaeModel::is_model_file(o.model)) {
    predict_tae(o, images, report, probs);
    return;
  }
  CHORUS_CHECK(o.adapted.empty(),
               "--adapted '{}' goes with a tae model; '{}' is not one",
               o.adapted.string(), o.model.string());
  auto fused = fusion::load_fused_model(o.model);
  fusion::check_predicts_alone(fused, o.model);
  const auto shape = images.sizes().slice(1).vec();
  CHORUS_CHECK(fused.spec.input_shape == shape,
               "model '{}' takes inputs of shape [{}], the images are [{}]",
               o.model.string(), fmt::join(fused.spec.input_shape, ", "),
               fmt::join(shape, ", "));
  fusion::ThreadGuard guard(o.threads);
  probs = fusion::predict_proba(*fused.model, images);
  report.source = "model " + o.model.string();
  report.algorithm = fused.algorithm;
  auto task = fusion::task_outputs(fused);
  report.class_names =
      task.names.empty() ? output_names(fused.spec.num_classes) : task.names;
}

// An operator's connection to a coordinator, on `io` (running elsewhere).
std::shared_ptr<protocol::Connection> operator_connection(
    asio::io_context& io, const std::string& host, std::uint16_t port,
    const protocol::TlsMaterial& tls) {
  protocol::Hello hello;
  hello.software = fmt::format("chorus {}", kVersion);
  hello.capabilities = {"operator"};
  return protocol::connect(
      io, host, port, tls, protocol::ChannelOptions{}, hello,
      [](v1::Envelope) -> asio::awaitable<v1::Envelope> {
        co_return protocol::make_status(Code::kUnimplemented,
                                        "an operator answers no requests");
      });
}

// Runs `work` with an io_context running on a thread of its own.
template <typename Work>
void with_io(Work&& work) {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::thread io_thread([&] { io.run(); });
  auto finish = [&] {
    guard.reset();
    io.stop();
    io_thread.join();
  };
  try {
    work(io);
  } catch (...) {
    finish();
    throw;
  }
  finish();
}

void predict_remotely(const PredictOptions& o, const torch::Tensor& images,
                      PredictReport& report, torch::Tensor& probs) {
  std::vector<torch::Tensor> parts;
  with_io([&](asio::io_context& io) {
    auto connection = operator_connection(io, o.host, o.port, o.tls);
    report.source = fmt::format("coordinator {}:{}", o.host, o.port);
    const auto who = fmt::format("the coordinator at {}:{}", o.host, o.port);
    for (std::int64_t begin = 0; begin < images.size(0); begin += o.batch) {
      protocol::PredictCall call{
          .inputs = protocol::to_blob(images.slice(0, begin, begin + o.batch)),
          .deadline_ms = static_cast<std::uint32_t>(o.deadline.count())};
      // A Status reply arrives as the error it names.
      auto r = protocol::predict_answer_of(
          connection
              ->request_async(protocol::envelope_of(std::move(call)),
                              o.deadline)
              .get(),
          who);
      parts.push_back(protocol::to_tensor(r.outputs));
      report.algorithm = r.algorithm;
      report.round = static_cast<int>(r.fused_round);
      report.expert_queries += static_cast<std::int64_t>(r.expert_queries);
      report.expert_cost += r.expert_cost;
      for (const auto& name : r.experts_away) {
        auto& away = report.experts_away;
        if (std::find(away.begin(), away.end(), name) == away.end())
          away.push_back(name);
      }
      report.class_names = r.labels;
    }
    connection->close("predictions done");
  });
  probs = torch::cat(parts);
  CHORUS_CHECK_CODE(
      probs.dim() == 2 && probs.size(0) == images.size(0) &&
          probs.size(1) == static_cast<std::int64_t>(report.class_names.size()),
      Code::kDataLoss,
      "the coordinator's answers do not match the {} images and {} labels",
      images.size(0), report.class_names.size());
}

}  // namespace

PredictReport predict_from_file(const PredictOptions& o) {
  CHORUS_CHECK(o.model.empty() != o.host.empty(),
               "give either a fused model file or a coordinator to ask, not {}",
               o.model.empty() ? "neither" : "both");
  CHORUS_CHECK(o.batch >= 1 && o.limit >= 0,
               "batch must be >= 1 and limit >= 0");
  auto images = fusion::read_image_file(o.input);
  if (o.limit > 0 && o.limit < images.size(0))
    images = images.slice(0, 0, o.limit);
  torch::Tensor labels;
  if (!o.labels.empty()) {
    labels = fusion::read_label_file(o.labels);
    CHORUS_CHECK(labels.size(0) >= images.size(0),
                 "'{}' has {} labels for {} images", o.labels.string(),
                 labels.size(0), images.size(0));
    labels = labels.slice(0, 0, images.size(0));
  }

  PredictReport report;
  torch::Tensor probs;
  const auto start = std::chrono::steady_clock::now();
  if (!o.model.empty()) {
    predict_locally(o, images, report, probs);
  } else {
    predict_remotely(o, images, report, probs);
  }
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  probs = probs.to(torch::kFloat32).contiguous();
  auto predicted = probs.argmax(1);
  report.predicted.assign(
      predicted.data_ptr<std::int64_t>(),
      predicted.data_ptr<std::int64_t>() + predicted.numel());
  const auto c = probs.size(1);
  for (std::int64_t i = 0; i < probs.size(0); ++i) {
    const float* row = probs.data_ptr<float>() + i * c;
    report.probabilities.emplace_back(row, row + c);
  }
  if (report.class_labels.empty()) {
    for (std::int64_t k = 0; k < c; ++k) report.class_labels.push_back(k);
  }
  CHORUS_CHECK_CODE(static_cast<std::int64_t>(report.class_labels.size()) == c,
                    Code::kInternal, "{} class labels for {} columns",
                    report.class_labels.size(), c);
  if (labels.defined()) {
    // Labels as columns; images of other classes (outside a tae task) are not
    // scored.
    auto column = torch::full_like(labels, -1);
    for (std::int64_t k = 0; k < c; ++k) {
      column.masked_fill_(
          labels.eq(report.class_labels[static_cast<std::size_t>(k)]), k);
    }
    auto rows = column.ge(0);
    report.scored = rows.sum().item<std::int64_t>();
    if (report.scored > 0) {
      report.accuracy =
          predicted.eq(column).logical_and(rows).sum().item<double>() /
          static_cast<double>(report.scored);
    }
  }
  return report;
}

protocol::CoordinatorStatus ask_status(const std::string& host,
                                       std::uint16_t port,
                                       const protocol::TlsMaterial& tls,
                                       std::chrono::milliseconds deadline) {
  protocol::CoordinatorStatus status;
  with_io([&](asio::io_context& io) {
    auto connection = operator_connection(io, host, port, tls);
    status = protocol::status_of(
        connection->request_async(protocol::status_request(), deadline).get(),
        fmt::format("the coordinator at {}:{}", host, port));
    connection->close("status received");
  });
  return status;
}

}  // namespace chorus::coordinator
