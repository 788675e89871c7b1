#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "chorus/node/budget.hpp"
#include "chorus/protocol/messages.hpp"

/// A node's query policy: what the data owner allows the coordinator to ask,
/// and in what form answers leave the node. The node enforces it and
/// announces it in its Hello.
namespace chorus::node {

/// The form of each answer (as the protocol names it).
using protocol::OutputForm;

/// "probabilities", "top-k" or "label-only".
const char* output_form_name(OutputForm form);
/// Parses `output_form_name`'s form. Throws `chorus::Error`.
OutputForm parse_output_form(const std::string& text);

/// Everything a node's owner sets about queries.
struct QueryPolicy {
  /// Batch cap, total and per-round budgets (in inputs).
  BudgetPolicy budget;
  /// Inputs per second; 0 is unlimited.
  double rate_limit = 0;
  OutputForm output_form = OutputForm::kProbabilities;
  /// For `OutputForm::kTopK`.
  std::int64_t top_k = 1;
  /// Probabilities are sharpened (< 1) or flattened (> 1) as p^(1/T),
  /// renormalised, before anything else; 1 is none.
  double temperature = 1.0;
  /// Std of Gaussian noise added to the probabilities (then clipped at zero
  /// and renormalised); 0 is none. No formal privacy guarantee: for one,
  /// `budget.privacy` ([policy.privacy]).
  double noise_std = 0.0;
  /// Seeds the noise, so that an audit can reproduce it.
  std::uint64_t noise_seed = 0;

  /// Throws `chorus::Error` (INVALID_ARGUMENT) naming the offending field.
  void validate() const;
};

/// Paces inputs to `rate` per second (0: unlimited). Thread-safe.
class RateLimiter {
 public:
  explicit RateLimiter(double rate);
  /// Reserves capacity for `n` inputs and returns how long the caller must
  /// wait before serving them. Throws `chorus::Error` (RESOURCE_EXHAUSTED,
  /// naming the wait) when that is longer than `max_wait`; nothing is
  /// reserved then.
  std::chrono::milliseconds reserve(std::int64_t n,
                                    std::chrono::milliseconds max_wait);

 private:
  double rate_;
  std::mutex mutex_;
  std::chrono::steady_clock::time_point next_free_{};
};

}  // namespace chorus::node
