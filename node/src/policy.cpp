#include "chorus/node/policy.hpp"

#include <cmath>

#include "chorus/core/error.hpp"

namespace chorus::node {

const char* output_form_name(OutputForm form) {
  switch (form) {
    case OutputForm::kProbabilities:
      return "probabilities";
    case OutputForm::kTopK:
      return "top-k";
    case OutputForm::kLabelOnly:
      return "label-only";
  }
  return "?";
}

OutputForm parse_output_form(const std::string& text) {
  if (text == "probabilities") return OutputForm::kProbabilities;
  if (text == "top-k") return OutputForm::kTopK;
  if (text == "label-only") return OutputForm::kLabelOnly;
  fail(Code::kInvalidArgument,
       "unknown output form '{}' (expected probabilities, top-k or label-only)",
       text);
}

void QueryPolicy::validate() const {
  budget.validate();
  CHORUS_CHECK(
      std::isfinite(rate_limit) && rate_limit >= 0,
      "query policy: rate_limit must be >= 0 inputs per second, got {}",
      rate_limit);
  CHORUS_CHECK(top_k >= 1, "query policy: top_k must be at least 1, got {}",
               top_k);
  CHORUS_CHECK(std::isfinite(temperature) && temperature > 0,
               "query policy: temperature must be positive, got {}",
               temperature);
  CHORUS_CHECK(std::isfinite(noise_std) && noise_std >= 0,
               "query policy: noise_std must be >= 0, got {}", noise_std);
  if (budget.privacy) {
    // GNMax's answer is a label: no other form is covered by the guarantee.
    CHORUS_CHECK(output_form == OutputForm::kLabelOnly,
                 "query policy: [policy.privacy] answers are noisy labels; set "
                 "output_form = \"label-only\" (got \"{}\")",
                 output_form_name(output_form));
    CHORUS_CHECK(noise_std == 0,
                 "query policy: noise_std and [policy.privacy] are two noise "
                 "mechanisms; keep only [policy.privacy] (noise_std = {})",
                 noise_std);
  }
}

RateLimiter::RateLimiter(double rate) : rate_(rate) {
  CHORUS_CHECK(std::isfinite(rate) && rate >= 0,
               "rate limit must be >= 0, got {}", rate);
}

std::chrono::milliseconds RateLimiter::reserve(
    std::int64_t n, std::chrono::milliseconds max_wait) {
  using namespace std::chrono;
  if (rate_ <= 0) return milliseconds(0);
  std::lock_guard lock(mutex_);
  const auto now = steady_clock::now();
  const auto start = std::max(now, next_free_);
  const auto wait = duration_cast<milliseconds>(start - now);
  if (wait > max_wait) {
    fail(Code::kResourceExhausted,
         "rate limit of {} inputs/s: {} inputs could be served in {} ms, after "
         "the request's deadline of {} ms",
         rate_, n, wait.count(), max_wait.count());
  }
  next_free_ = start + duration_cast<steady_clock::duration>(
                           duration<double>(static_cast<double>(n) / rate_));
  return wait;
}

}  // namespace chorus::node
