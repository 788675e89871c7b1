// The registry of algorithms' round steps.
#include "after_round.hpp"

#include <algorithm>
#include <map>

#include "chorus/protocol/eventual.hpp"

namespace chorus::coordinator {

asio::awaitable<NodeReplies<protocol::AdaptAnswer>> adapt_pushed(
    const RoundContext& ctx, int round, const RoundReport& report) {
  std::vector<std::string> asked;
  std::vector<std::shared_ptr<NodeLink>> links;  // Outlive their calls.
  std::vector<asio::awaitable<CallResult<protocol::AdaptAnswer>>> calls;
  for (const auto& node : ctx.registry.connected()) {
    if (!node.announced.can("adapt")) continue;
    if (std::find(report.pushed_to.begin(), report.pushed_to.end(),
                  node.identity) == report.pushed_to.end()) {
      continue;
    }
    asked.push_back(node.identity);
    links.push_back(ctx.registry.link(node.identity));
    calls.push_back(
        links.back()->adapt({.round = static_cast<std::uint32_t>(round)},
                            ctx.options.request_deadline));
  }
  NodeReplies<protocol::AdaptAnswer> out;
  if (asked.empty()) co_return out;
  auto replies = co_await protocol::all_of(std::move(calls));
  for (std::size_t k = 0; k < asked.size(); ++k)
    out.emplace_back(asked[k], std::move(replies[k]));
  co_return out;
}

std::unique_ptr<AfterRound> make_after_round(const std::string& algorithm,
                                             const RoundContext& context) {
  using Factory = std::unique_ptr<AfterRound> (*)(const RoundContext&);
  static const std::map<std::string, Factory> kRegistered = {
      {"tae", make_tae_round},
      {"dro", make_dro_round},
  };
  auto it = kRegistered.find(algorithm);
  if (it != kRegistered.end()) return it->second(context);
  return std::make_unique<AfterRound>();
}

}  // namespace chorus::coordinator
