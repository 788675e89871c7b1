// The registry of algorithms' round steps.
#include "after_round.hpp"

#include <algorithm>
#include <map>

namespace chorus::coordinator {

asio::awaitable<NodeReplies<protocol::AdaptAnswer>> adapt_pushed(
    const RoundContext& ctx, int round, const RoundReport& report) {
  std::vector<std::string> names;
  for (const auto& node : ctx.registry.connected()) {
    if (node.announced.can("adapt") &&
        std::find(report.pushed_to.begin(), report.pushed_to.end(),
                  node.identity) != report.pushed_to.end()) {
      names.push_back(node.identity);
    }
  }
  const protocol::AdaptCall call{.round = static_cast<std::uint32_t>(round)};
  auto adapt = [call, deadline = ctx.options.request_deadline](NodeLink& l) {
    return l.adapt(call, deadline);
  };
  co_return co_await ask_each<protocol::AdaptAnswer>(ctx.registry,
                                                     std::move(names), adapt);
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
