#include "chorus/coordinator/remote_oracle.hpp"

#include <torch/torch.h>

#include <deque>

#include "chorus/core/error.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/protocol/tensor_codec.hpp"

namespace chorus::coordinator {
namespace {

// The hook of the `query_each_batch` running on this thread (do_query runs
// on the caller's thread, under QueryOracle::query's accounting).
thread_local const RemoteOracle::BatchHook* t_on_batch = nullptr;

}  // namespace

torch::Tensor RemoteOracle::query_each_batch(std::int64_t expert,
                                             const torch::Tensor& inputs,
                                             const BatchHook& on_batch) {
  struct Reset {
    ~Reset() { t_on_batch = nullptr; }
  } reset;
  t_on_batch = &on_batch;
  return query(expert, inputs);
}

RemoteOracle::RemoteOracle(std::int64_t num_classes,
                           std::vector<RemoteExpert> experts, RequestFn request,
                           RemoteOracleOptions options)
    : num_classes_(num_classes),
      remote_(std::move(experts)),
      request_(std::move(request)),
      options_(options) {
  CHORUS_CHECK(num_classes > 0, "an oracle needs a positive number of classes");
  CHORUS_CHECK(options_.batch > 0 && options_.window > 0,
               "query batch and window must be positive");
  for (const auto& r : remote_) {
    CHORUS_CHECK(r.max_batch > 0, "node '{}' announced max_batch {}",
                 r.info.name, r.max_batch);
    infos_.push_back(r.info);
  }
}

torch::Tensor RemoteOracle::do_query(std::int64_t expert,
                                     const torch::Tensor& inputs) {
  const auto& node = remote_[static_cast<std::size_t>(expert)];
  const auto step = std::min(options_.batch, node.max_batch);
  const auto x = inputs.to(torch::kFloat32).contiguous();
  const auto n = x.size(0);
  std::vector<torch::Tensor> parts;
  std::deque<std::future<v1::Envelope>> in_flight;
  std::int64_t answered = 0;
  const auto* on_batch = t_on_batch;
  const auto labels = static_cast<std::int64_t>(node.info.labels.size());
  auto collect = [&] {
    auto reply = in_flight.front().get();
    in_flight.pop_front();
    CHORUS_CHECK_CODE(reply.has_predict_response(), Code::kDataLoss,
                      "node '{}' answered a Predict with something else",
                      node.info.name);
    parts.push_back(
        protocol::decode_tensor(reply.predict_response().outputs()));
    const auto& part = parts.back();
    const auto rows = std::min(step, n - answered);
    CHORUS_CHECK_CODE(
        part.dim() == 2 && part.size(0) == rows && part.size(1) == labels,
        Code::kDataLoss,
        "node '{}' answered {} inputs with a tensor of {} dimensions ({} "
        "rows), expected [{}, {}]",
        node.info.name, rows, part.dim(), part.dim() ? part.size(0) : 0, rows,
        labels);
    CHORUS_CHECK_CODE(!protocol::has_non_finite(part), Code::kDataLoss,
                      "node '{}' answered with NaN or infinite values",
                      node.info.name);
    if (on_batch && *on_batch) (*on_batch)(answered, part);
    answered += rows;
  };
  for (std::int64_t i = 0; i < n; i += step) {
    if (options_.stop.stop_requested()) {
      while (!in_flight.empty()) collect();
      fail(Code::kCancelled,
           "querying node '{}' cancelled after {} of {} inputs answered",
           node.info.name, answered, n);
    }
    v1::Envelope request;
    auto* r = request.mutable_predict_request();
    r->set_round(options_.round);
    r->set_deadline_ms(static_cast<std::uint32_t>(options_.deadline.count()));
    // Converted request by request: the wire form of the whole pool is
    // never held at once.
    const auto part = x.slice(0, i, std::min(n, i + step));
    protocol::encode_tensor(
        options_.task ? fusion::to_wire_inputs(part, *options_.task) : part,
        r->mutable_inputs());
    in_flight.push_back(
        request_(node.info.name, std::move(request), options_.deadline));
    if (static_cast<std::int64_t>(in_flight.size()) >= options_.window)
      collect();
  }
  while (!in_flight.empty()) collect();
  return torch::cat(parts);
}

std::int64_t RemoteOracle::shipped_bytes(const torch::Tensor& inputs) const {
  const bool bytes =
      options_.task && options_.task->dtype == InputDType::kUInt8;
  return inputs.numel() * (bytes ? 1 : 4);
}

std::vector<torch::Tensor> RemoteOracle::query_all(
    const torch::Tensor& inputs) {
  std::vector<std::int64_t> all(static_cast<std::size_t>(num_experts()));
  for (std::size_t i = 0; i < all.size(); ++i)
    all[i] = static_cast<std::int64_t>(i);
  auto g = gather(*this, inputs, all);
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (!g.answers[i].defined()) {
      fail(Code::kUnavailable, "expert '{}' did not answer: {}",
           experts()[i].name, g.errors[i]);
    }
  }
  return g.answers;
}

Gathered gather(fusion::QueryOracle& oracle, const torch::Tensor& inputs,
                const std::vector<std::int64_t>& experts) {
  Gathered out;
  out.answers.resize(experts.size());
  out.errors.resize(experts.size());
  std::vector<std::future<torch::Tensor>> futures;
  for (auto e : experts) {
    futures.push_back(std::async(std::launch::async, [&oracle, &inputs, e] {
      return oracle.query(e, inputs);
    }));
  }
  for (std::size_t i = 0; i < futures.size(); ++i) {
    try {
      out.answers[i] = futures[i].get();
    } catch (const Error& e) {
      out.errors[i] = describe(e);
    } catch (const std::exception& e) {
      out.errors[i] = e.what();
    }
  }
  return out;
}

}  // namespace chorus::coordinator
