// The broadcaster: a fused model pushed to every connected node.
#include "broadcast.hpp"

#include <algorithm>
#include <future>
#include <utility>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/protocol/digest.hpp"

namespace chorus::coordinator {

std::vector<std::string> broadcast_model(NodeRegistry& registry,
                                         const std::string& bytes,
                                         const PushedModel& model,
                                         std::size_t chunk,
                                         std::chrono::milliseconds deadline) {
  auto log = log::get("coordinator");
  const std::string digest = protocol::sha256(bytes);
  chunk = std::max<std::size_t>(1, chunk);
  const auto count =
      static_cast<std::uint32_t>((bytes.size() + chunk - 1) / chunk);
  std::vector<std::string> taking;
  for (const auto& node : registry.connected()) {
    taking.push_back(node.identity);
  }
  for (std::uint32_t i = 0; i < count && !taking.empty(); ++i) {
    std::vector<std::pair<std::string, std::future<v1::Envelope>>> acks;
    for (const auto& id : taking) {
      v1::Envelope e;
      auto* p = e.mutable_model_push();
      p->set_round(static_cast<std::uint32_t>(model.round));
      p->set_algorithm(model.algorithm);
      p->set_spec(model.spec);
      p->set_chunk_index(i);
      p->set_chunk_count(count);
      p->set_total_bytes(bytes.size());
      p->set_sha256(digest);
      p->set_data(bytes.substr(i * chunk, chunk));
      acks.emplace_back(id, registry.request(id, std::move(e), deadline));
    }
    std::vector<std::string> still;
    for (auto& [id, ack] : acks) {
      try {
        ack.get();
        still.push_back(id);
      } catch (const Error& err) {
        log->warn("round={} node={} event=push_failed chunk={} error=\"{}\"",
                  model.round, id, i, describe(err));
      }
    }
    taking = std::move(still);
  }
  return taking;
}

}  // namespace chorus::coordinator
