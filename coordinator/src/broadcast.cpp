// The broadcaster: a fused model pushed to every connected node.
#include "broadcast.hpp"

#include <algorithm>
#include <utility>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/progress.hpp"
#include "chorus/protocol/digest.hpp"
#include "chorus/protocol/eventual.hpp"

namespace chorus::coordinator {
namespace {

// Chunk by chunk, every node that still takes the model at once.
asio::awaitable<std::vector<std::string>> push_all(
    std::vector<std::shared_ptr<NodeLink>> taking, const std::string& bytes,
    PushedModel model, std::size_t chunk, std::chrono::milliseconds deadline) {
  auto log = log::get("coordinator");
  const std::string digest = protocol::sha256(bytes);
  const auto count =
      static_cast<std::uint32_t>((bytes.size() + chunk - 1) / chunk);
  // On a terminal: the bytes delivered, over every node taking the model.
  progress::Bar bar(
      fmt::format("push round {} to {} node(s)", model.round, taking.size()),
      static_cast<double>(bytes.size() * taking.size()), "bytes");
  for (std::uint32_t i = 0; i < count && !taking.empty(); ++i) {
    std::vector<asio::awaitable<CallResult<protocol::Ack>>> acks;
    for (const auto& link : taking) {
      protocol::ModelChunk c{.round = static_cast<std::uint32_t>(model.round),
                             .algorithm = model.algorithm,
                             .spec = model.spec,
                             .chunk_index = i,
                             .chunk_count = count,
                             .total_bytes = bytes.size(),
                             .sha256 = digest,
                             .data = bytes.substr(i * chunk, chunk)};
      acks.push_back(link->push(std::move(c), deadline));
    }
    auto results = co_await protocol::all_of(std::move(acks));
    std::vector<std::shared_ptr<NodeLink>> still;
    for (std::size_t k = 0; k < taking.size(); ++k) {
      if (const auto& error = results[k].error) {
        log->warn("round={} node={} event=push_failed chunk={} error=\"{}\"",
                  model.round, taking[k]->identity(), i, describe(*error));
      } else {
        still.push_back(taking[k]);
      }
    }
    bar.advance(static_cast<double>(
        std::min(chunk, bytes.size() - std::size_t{i} * chunk) * still.size()));
    taking = std::move(still);
  }
  std::vector<std::string> out;
  for (const auto& link : taking) out.push_back(link->identity());
  co_return out;
}

}  // namespace

asio::awaitable<std::vector<std::string>> push_model(
    NodeRegistry& registry, const std::string& bytes, PushedModel model,
    std::size_t chunk, std::chrono::milliseconds deadline) {
  std::vector<std::shared_ptr<NodeLink>> taking;
  for (const auto& node : registry.connected()) {
    taking.push_back(registry.link(node.identity));
  }
  co_return co_await push_all(std::move(taking), bytes, std::move(model),
                              std::max<std::size_t>(1, chunk), deadline);
}

}  // namespace chorus::coordinator
