#pragma once

#include <asio/awaitable.hpp>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chorus/coordinator/coordinator.hpp"
#include "chorus/coordinator/node_link.hpp"
#include "chorus/coordinator/registry.hpp"
#include "chorus/fusion/algorithms.hpp"
#include "chorus/protocol/eventual.hpp"

/// Steps an algorithm adds to every round of the coordinator, around the
/// push of its model — tae's adaptation by the nodes and the refit of its
/// prior on their prototype embeddings, dro's adaptation by the nodes. Each
/// algorithm that needs such steps registers a factory in after_round.cpp; the
/// rounds do not name any algorithm.
namespace chorus::coordinator {

/// What an algorithm's round steps may use.
struct RoundContext {
  NodeRegistry& registry;
  const CoordinatorOptions& options;
  /// Each node's labels, as indices in the federation's label space.
  const std::map<std::string, std::vector<std::int64_t>>& labels;
  /// Runs blocking work (training, files) off the network thread and
  /// awaits it; what it throws comes back as the error.
  std::function<asio::awaitable<std::optional<Error>>(std::function<bool()>)>
      compute;
};

/// An algorithm's steps in a round. The defaults do nothing. The coroutines
/// run on the round's strand (the registry's executor) and return their
/// error as a value, which ends the round; blocking work inside them goes
/// through `RoundContext::compute`.
class AfterRound {
 public:
  virtual ~AfterRound() = default;
  /// `--resume`: reloads what earlier rounds kept in the run directory.
  virtual void resume() {}
  /// Before the round's fit: may add to what the algorithm learns from.
  virtual asio::awaitable<std::optional<Error>> before_fit(
      fusion::FusionData& data, int round) {
    co_return std::nullopt;
  }
  /// After the round's fit, before its model is saved and pushed; runs on
  /// the compute thread with the fit.
  virtual void before_push(fusion::Fuser& fuser, int round) {}
  /// After the push to `report.pushed_to`; may save the model again to
  /// `model_file` (and the run directory's fused.pt).
  virtual asio::awaitable<std::optional<Error>> after_push(
      fusion::Fuser& fuser, int round, RoundReport& report,
      const std::filesystem::path& model_file) {
    co_return std::nullopt;
  }
};

/// What each node asked answered, in the order asked.
template <typename T>
using NodeReplies = std::vector<std::pair<std::string, CallResult<T>>>;

/// Asks each of the nodes `names` at once, `ask(link)` returning the call
/// (an awaitable CallResult<T>); their results in the same order. Pass
/// `ask` as a named object: a lambda written in a statement with co_await
/// is destroyed twice by g++ 12 (tests/protocol/coroutine_rule_test.cpp).
template <typename T, typename Ask>
asio::awaitable<NodeReplies<T>> ask_each(NodeRegistry& registry,
                                         std::vector<std::string> names,
                                         Ask ask) {
  std::vector<std::shared_ptr<NodeLink>> links;  // Outlive their calls.
  std::vector<asio::awaitable<CallResult<T>>> calls;
  for (const auto& name : names) {
    links.push_back(registry.link(name));
    calls.push_back(ask(*links.back()));
  }
  NodeReplies<T> out;
  if (names.empty()) co_return out;
  auto replies = co_await protocol::all_of(std::move(calls));
  for (std::size_t k = 0; k < names.size(); ++k)
    out.emplace_back(names[k], std::move(replies[k]));
  co_return out;
}

/// Asks every node that was pushed this round's model (`report.pushed_to`)
/// and can adapt to adapt it to its own task, all at once. Returns the
/// nodes asked and their results, in the same order.
asio::awaitable<NodeReplies<protocol::AdaptAnswer>> adapt_pushed(
    const RoundContext& context, int round, const RoundReport& report);

/// The steps `algorithm` registered, or ones that do nothing.
std::unique_ptr<AfterRound> make_after_round(const std::string& algorithm,
                                             const RoundContext& context);

/// tae's steps (tae_round.cpp).
std::unique_ptr<AfterRound> make_tae_round(const RoundContext& context);

/// dro's steps (dro_round.cpp).
std::unique_ptr<AfterRound> make_dro_round(const RoundContext& context);

}  // namespace chorus::coordinator
