#include "chorus/coordinator/predict.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <thread>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/version.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/protocol/tensor_codec.hpp"

namespace chorus::coordinator {
namespace {

void predict_locally(const PredictOptions& o, const torch::Tensor& images,
                     PredictReport& report, torch::Tensor& probs) {
  auto fused = fusion::load_fused_model(o.model);
  CHORUS_CHECK_CODE(
      !fusion::needs_experts_at_prediction(fused.algorithm),
      Code::kFailedPrecondition,
      "'{}' is a {} fuser: it combines the experts' answers at prediction time; ask "
      "the coordinator that runs it (chorus predict --coordinator HOST:PORT)",
      o.model.string(), fused.algorithm);
  const auto shape = images.sizes().slice(1).vec();
  CHORUS_CHECK(fused.spec.input_shape == shape,
               "model '{}' takes inputs of shape [{}], the images are [{}]",
               o.model.string(), fmt::join(fused.spec.input_shape, ", "),
               fmt::join(shape, ", "));
  fusion::ThreadGuard guard(o.threads);
  probs = fusion::predict_proba(*fused.model, images);
  report.source = "model " + o.model.string();
  report.algorithm = fused.algorithm;
  report.class_names = fused.spec.num_classes == 10
                           ? fusion::fashion_mnist_class_names()
                           : std::vector<std::string>{};
  for (std::int64_t c = static_cast<std::int64_t>(report.class_names.size());
       c < fused.spec.num_classes; ++c) {
    report.class_names.push_back(std::to_string(c));
  }
}

void predict_remotely(const PredictOptions& o, const torch::Tensor& images,
                      PredictReport& report, torch::Tensor& probs) {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::thread io_thread([&] { io.run(); });
  auto finish = [&] {
    guard.reset();
    io.stop();
    io_thread.join();
  };
  std::vector<torch::Tensor> parts;
  try {
    v1::Hello hello;
    hello.set_software(fmt::format("chorus {}", kVersion));
    hello.add_capabilities("operator");
    auto connection = protocol::connect(
        io, o.host, o.port, o.tls, protocol::ChannelOptions{}, hello,
        [](const v1::Envelope&) -> asio::awaitable<v1::Envelope> {
          co_return protocol::make_status(Code::kUnimplemented,
                                          "an operator answers no requests");
        });
    report.source = fmt::format("coordinator {}:{}", o.host, o.port);
    for (std::int64_t begin = 0; begin < images.size(0); begin += o.batch) {
      v1::Envelope request;
      auto* p = request.mutable_predict_request();
      p->set_deadline_ms(static_cast<std::uint32_t>(o.deadline.count()));
      protocol::encode_tensor(images.slice(0, begin, begin + o.batch), p->mutable_inputs());
      auto reply = connection->request_async(request, o.deadline).get();
      if (reply.has_status()) {
        throw Error(static_cast<Code>(reply.status().code()), reply.status().message());
      }
      CHORUS_CHECK_CODE(reply.has_predict_response(), Code::kDataLoss,
                        "the coordinator answered with something other than a "
                        "PredictResponse");
      const auto& r = reply.predict_response();
      parts.push_back(protocol::decode_tensor(r.outputs()));
      report.algorithm = r.algorithm();
      report.round = static_cast<int>(r.fused_round());
      report.expert_queries += static_cast<std::int64_t>(r.expert_queries());
      report.class_names.assign(r.labels().begin(), r.labels().end());
    }
    connection->close("predictions done");
  } catch (...) {
    finish();
    throw;
  }
  finish();
  probs = torch::cat(parts);
  CHORUS_CHECK_CODE(probs.dim() == 2 && probs.size(0) == images.size(0) &&
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
  CHORUS_CHECK(o.batch >= 1 && o.limit >= 0, "batch must be >= 1 and limit >= 0");
  auto images = fusion::read_image_file(o.input);
  if (o.limit > 0 && o.limit < images.size(0)) images = images.slice(0, 0, o.limit);
  torch::Tensor labels;
  if (!o.labels.empty()) {
    labels = fusion::read_label_file(o.labels);
    CHORUS_CHECK(labels.size(0) >= images.size(0),
                 "'{}' has {} labels for {} images", o.labels.string(), labels.size(0),
                 images.size(0));
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
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  probs = probs.to(torch::kFloat32).contiguous();
  auto predicted = probs.argmax(1);
  report.predicted.assign(predicted.data_ptr<std::int64_t>(),
                          predicted.data_ptr<std::int64_t>() + predicted.numel());
  const auto c = probs.size(1);
  for (std::int64_t i = 0; i < probs.size(0); ++i) {
    const float* row = probs.data_ptr<float>() + i * c;
    report.probabilities.emplace_back(row, row + c);
  }
  if (labels.defined()) {
    report.accuracy = predicted.eq(labels).to(torch::kDouble).mean().item<double>();
  }
  return report;
}

}  // namespace chorus::coordinator
