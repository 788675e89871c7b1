#pragma once
// What the coordinator is doing, for `chorus status` (StatusRequest, protocol
// 1.5): the round and its phase, set by the rounds; each node's progress in
// the round, set as its answers arrive. On a terminal it is also drawn live
// (progress.hpp): a line for the round and its phase, one per node with
// the inputs it answered of those asked. Thread-safe; no torch, no Asio.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "chorus/core/progress.hpp"
#include "chorus/protocol/messages.hpp"

namespace chorus::coordinator {

class StatusBoard {
 public:
  StatusBoard(std::string coordinator, std::string algorithm,
              std::uint32_t rounds);

  /// Round `round` entered `phase` (quorum, query, fit, push, adapt; done,
  /// serving after the rounds). Entering "query" starts the round's
  /// progress afresh: asked, answered and left-out reasons.
  void phase(std::uint32_t round, std::string phase);
  /// `node` is asked `inputs` more inputs in this round.
  void asking(const std::string& node, std::int64_t inputs);
  /// `node` answered `inputs` of them.
  void answered(const std::string& node, std::int64_t inputs);
  /// `node` is left out of this round, and why.
  void left_out(const std::string& node, std::string reason);
  /// Round `round` is done.
  void round_done(std::uint32_t round);

  /// The status of `roster`: `last_heard` holds the connected nodes and the
  /// time each was last heard from, `refused` why a node not connected was
  /// last refused (its Hello, or its certificate revoked). Totals come from
  /// the metrics (chorus_coordinator_*_total).
  protocol::CoordinatorStatus snapshot(
      const std::vector<std::string>& roster,
      const std::map<std::string, std::chrono::steady_clock::time_point>&
          last_heard,
      const std::map<std::string, std::string>& refused = {}) const;

 private:
  struct Progress {
    std::int64_t asked = 0, answered = 0;
    std::string left_out;
  };
  mutable std::mutex mutex_;
  std::string coordinator_, algorithm_;
  std::uint32_t rounds_ = 0, round_ = 0, rounds_done_ = 0;
  std::string phase_ = "quorum";
  std::chrono::steady_clock::time_point since_ =
      std::chrono::steady_clock::now();
  std::map<std::string, Progress> progress_;
  // The live view (only when progress::enabled()).
  std::unique_ptr<progress::Bar> round_bar_;
  std::map<std::string, std::unique_ptr<progress::Bar>> node_bars_;
};

}  // namespace chorus::coordinator
