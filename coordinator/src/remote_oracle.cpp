#include "chorus/coordinator/remote_oracle.hpp"

#include <torch/torch.h>

#include <asio/this_coro.hpp>
#include <deque>

#include "chorus/core/error.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/protocol/eventual.hpp"
#include "chorus/protocol/tensor_codec.hpp"
#include "fan_out.hpp"

namespace chorus::coordinator {

using protocol::Eventual;
using Answer = Eventual<CallResult<protocol::PredictAnswer>>;

namespace {

// The coordinator's per-node request metrics (docs/observability.md).
void count_answered(const metrics::Labels& node, std::int64_t inputs,
                    std::int64_t sent, std::int64_t received,
                    std::chrono::steady_clock::duration latency) {
  metrics::count("chorus_coordinator_requests_total",
                 "Prediction requests answered, by node", node);
  metrics::count("chorus_coordinator_inputs_queried_total",
                 "Inputs a node answered for this coordinator", node,
                 static_cast<double>(inputs));
  metrics::count("chorus_coordinator_sent_bytes_total",
                 "Input bytes sent to a node in prediction requests", node,
                 static_cast<double>(sent));
  metrics::count("chorus_coordinator_received_bytes_total",
                 "Answer bytes received from a node (as float32)", node,
                 static_cast<double>(received));
  metrics::observe("chorus_coordinator_request_duration_seconds",
                   "Time from sending a prediction request to its answer, "
                   "by node",
                   node, std::chrono::duration<double>(latency).count());
}

void count_failed(const metrics::Labels& node, Code code) {
  auto labels = node;
  labels["code"] = std::string(code_name(code));
  metrics::count("chorus_coordinator_requests_failed_total",
                 "Prediction requests that failed or were refused, by node "
                 "and code",
                 labels);
}

// The inputs of one request as they travel: the task's dtype, unnormalised
// (converted request by request, so the wire form of a whole pool is never
// held at once).
protocol::TensorBlob wire_inputs(const torch::Tensor& part,
                                 const RemoteOracleOptions& options) {
  return protocol::to_blob(
      options.task ? fusion::to_wire_inputs(part, *options.task) : part);
}

std::int64_t wire_bytes(std::int64_t elements,
                        const RemoteOracleOptions& options) {
  const bool bytes = options.task && options.task->dtype == InputDType::kUInt8;
  return elements * (bytes ? 1 : 4);
}

// A node's answers to `rows` inputs, checked.
torch::Tensor checked(const RemoteExpert& node,
                      const protocol::PredictAnswer& answer,
                      std::int64_t rows) {
  auto part = protocol::to_tensor(answer.outputs);
  const auto labels = static_cast<std::int64_t>(node.info.labels.size());
  CHORUS_CHECK_CODE(
      part.dim() == 2 && part.size(0) == rows && part.size(1) == labels,
      Code::kDataLoss,
      "node '{}' answered {} inputs with a tensor of {} dimensions ({} "
      "rows), expected [{}, {}]",
      node.info.name, rows, part.dim(), part.dim() ? part.size(0) : 0, rows,
      labels);
  // One answer that is not a distribution would poison the fused model:
  // the node is left out of the round instead, named.
  if (auto why = protocol::distribution_problem(part)) {
    fail(Code::kDataLoss, "node '{}' answered with {}", node.info.name, *why);
  }
  return part;
}

}  // namespace

asio::awaitable<Asked> ask_node(RemoteExpert node, torch::Tensor inputs,
                                RemoteOracleOptions options, AnswerSink sink) {
  Asked out;
  const auto started = std::chrono::steady_clock::now();
  const auto ex = co_await asio::this_coro::executor;
  const auto step = std::min(options.batch, node.max_batch);
  const auto x = inputs.to(torch::kFloat32).contiguous();
  const auto n = x.size(0);
  const auto per_input = n > 0 ? x.numel() / n : 0;
  // Requests in flight, oldest first: the row each starts at, its answer,
  // the bytes of the global budget it holds.
  struct Sent {
    std::int64_t row;
    std::shared_ptr<Answer> answer;
    std::int64_t held;
    std::chrono::steady_clock::time_point at;
  };
  const metrics::Labels node_label{{"node", node.info.name}};
  std::deque<Sent> in_flight;
  const auto& budget = options.inflight;
  std::int64_t sent = 0;
  while (true) {
    while (!out.error && sent < n && !options.stop.stop_requested() &&
           static_cast<std::int64_t>(in_flight.size()) < options.window) {
      const auto held =
          wire_bytes(std::min(step, n - sent) * per_input, options);
      if (budget) {
        // With nothing in flight, wait for room; with some, consume an
        // answer first (it frees room) rather than wait on ourselves.
        if (in_flight.empty()) {
          co_await budget->acquire(held);
        } else if (!budget->try_acquire(held)) {
          break;
        }
      }
      protocol::PredictCall call{
          .round = options.round,
          .inputs =
              wire_inputs(x.slice(0, sent, std::min(n, sent + step)), options),
          .deadline_ms = static_cast<std::uint32_t>(options.deadline.count())};
      auto answer = node.link->predict(std::move(call), options.deadline);
      in_flight.push_back(Sent{sent, protocol::start(ex, std::move(answer)),
                               budget ? held : 0,
                               std::chrono::steady_clock::now()});
      sent += step;
    }
    if (in_flight.empty()) break;
    auto [row, answer, held, at] = std::move(in_flight.front());
    in_flight.pop_front();
    co_await answer->wait();
    if (budget) budget->release(held);
    // After a failure the rest in flight are awaited, not used.
    if (out.error) continue;
    auto& result = answer->get();
    if (result.error) {
      count_failed(node_label, result.error->code());
      out.error = std::move(result.error);
      continue;
    }
    const auto rows = std::min(step, n - row);
    torch::Tensor part;
    try {
      part = checked(node, result.reply, rows);
    } catch (const Error& e) {
      count_failed(node_label, e.code());
      out.error = e;
      continue;
    }
    out.stats.requests += 1;
    out.stats.inputs += rows;
    out.stats.bytes_sent += wire_bytes(rows * per_input, options);
    out.stats.bytes_received += part.numel() * 4;
    count_answered(node_label, rows, wire_bytes(rows * per_input, options),
                   part.numel() * 4, std::chrono::steady_clock::now() - at);
    if (sink) {
      if (auto failed = co_await sink(row, std::move(part))) {
        out.error = std::move(failed);
      }
    }
  }
  out.stats.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started)
          .count();
  if (!out.error && sent < n) {
    out.error =
        Error(Code::kCancelled,
              fmt::format("querying node '{}' cancelled after {} of {} inputs "
                          "answered",
                          node.info.name, out.stats.inputs, n));
  }
  co_return out;
}

RemoteOracle::RemoteOracle(std::int64_t num_classes,
                           std::vector<RemoteExpert> experts,
                           asio::any_io_executor executor,
                           RemoteOracleOptions options)
    : num_classes_(num_classes),
      remote_(std::move(experts)),
      executor_(std::move(executor)),
      options_(options) {
  CHORUS_CHECK(num_classes > 0, "an oracle needs a positive number of classes");
  CHORUS_CHECK(options_.batch > 0 && options_.window > 0,
               "query batch and window must be positive");
  for (const auto& r : remote_) {
    CHORUS_CHECK(r.max_batch > 0, "node '{}' announced max_batch {}",
                 r.info.name, r.max_batch);
    CHORUS_CHECK(r.link != nullptr, "node '{}' has no link", r.info.name);
    infos_.push_back(r.info);
  }
}

namespace {

// A sink that keeps the answers (runs on the executor while the caller
// waits for the whole query).
asio::awaitable<std::optional<Error>> keep(std::vector<torch::Tensor>& parts,
                                           torch::Tensor answers) {
  parts.push_back(std::move(answers));
  co_return std::nullopt;
}

AnswerSink keeping(std::vector<torch::Tensor>& parts) {
  return [&parts](std::int64_t, torch::Tensor answers) {
    return keep(parts, std::move(answers));
  };
}

}  // namespace

torch::Tensor RemoteOracle::do_query(std::int64_t expert,
                                     const torch::Tensor& inputs) {
  std::vector<torch::Tensor> parts;
  auto asked = run_blocking(
      executor_, ask_node(remote_[static_cast<std::size_t>(expert)], inputs,
                          options_, keeping(parts)));
  if (asked.error) throw *asked.error;
  return torch::cat(parts);
}

std::int64_t RemoteOracle::shipped_bytes(const torch::Tensor& inputs) const {
  return wire_bytes(inputs.numel(), options_);
}

std::vector<torch::Tensor> RemoteOracle::query_all(
    const torch::Tensor& inputs) {
  CHORUS_CHECK(inputs.defined() && inputs.dim() >= 1 && inputs.size(0) > 0,
               "a query needs at least one input");
  // Every expert at once, each into its own parts.
  std::vector<std::vector<torch::Tensor>> parts(remote_.size());
  std::vector<asio::awaitable<Asked>> works;
  for (std::size_t k = 0; k < remote_.size(); ++k) {
    works.push_back(ask_node(remote_[k], inputs, options_, keeping(parts[k])));
  }
  auto asked = run_blocking(executor_, protocol::all_of(std::move(works)));
  std::vector<torch::Tensor> out;
  for (std::size_t k = 0; k < remote_.size(); ++k) {
    if (asked[k].error) {
      fail(Code::kUnavailable, "expert '{}' did not answer: {}", infos_[k].name,
           describe(*asked[k].error));
    }
    out.push_back(
        accept(static_cast<std::int64_t>(k), inputs, torch::cat(parts[k])));
  }
  return out;
}

}  // namespace chorus::coordinator
