#include "chorus/core/privacy.hpp"

#include <cmath>
#include <limits>

#include "chorus/core/error.hpp"

namespace chorus::privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

double log_add(double a, double b) {
  if (a == -kInf) return b;
  if (b == -kInf) return a;
  const double hi = std::max(a, b);
  return hi + std::log1p(std::exp(std::min(a, b) - hi));
}

}  // namespace

const std::vector<double>& default_orders() {
  static const std::vector<double> orders = [] {
    std::vector<double> o{1.25, 1.5, 1.75};
    for (double a = 2; a <= 10; a += 0.5) o.push_back(a);
    for (double a = 11; a <= 64; ++a) o.push_back(a);
    o.push_back(128);
    o.push_back(256);
    return o;
  }();
  return orders;
}

double gaussian_rdp(double sigma, double alpha) {
  CHORUS_CHECK(sigma >= 0 && alpha > 1,
               "privacy: need sigma >= 0 and an order > 1, got {} and {}",
               sigma, alpha);
  return sigma == 0 ? kInf : alpha / (2 * sigma * sigma);
}

double sampled_gaussian_rdp(double q, double sigma, double alpha) {
  CHORUS_CHECK(q >= 0 && q <= 1, "privacy: sampling rate {} is not in [0, 1]",
               q);
  if (q == 0) return 0;
  if (q == 1) return gaussian_rdp(sigma, alpha);
  CHORUS_CHECK(sigma >= 0 && alpha > 1,
               "privacy: need sigma >= 0 and an order > 1, got {} and {}",
               sigma, alpha);
  if (sigma == 0 || alpha != std::floor(alpha)) return kInf;
  // log A_α = log Σ_k C(α,k) (1−q)^(α−k) q^k exp((k² − k) / (2σ²)).
  const auto a = static_cast<std::int64_t>(alpha);
  double log_a = -kInf;
  for (std::int64_t k = 0; k <= a; ++k) {
    const double log_binom = std::lgamma(alpha + 1) -
                             std::lgamma(static_cast<double>(k) + 1) -
                             std::lgamma(static_cast<double>(a - k) + 1);
    const double kd = static_cast<double>(k);
    log_a = log_add(log_a, log_binom + kd * std::log(q) +
                               (alpha - kd) * std::log1p(-q) +
                               (kd * kd - kd) / (2 * sigma * sigma));
  }
  return log_a / (alpha - 1);
}

double epsilon(const std::vector<double>& orders,
               const std::vector<double>& rdp, double delta) {
  CHORUS_CHECK(orders.size() == rdp.size() && !orders.empty(),
               "privacy: {} orders but {} RDP values", orders.size(),
               rdp.size());
  CHORUS_CHECK(delta > 0 && delta < 1, "privacy: delta {} is not in (0, 1)",
               delta);
  double best = kInf;
  for (std::size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i];
    if (!std::isfinite(rdp[i])) continue;
    const double eps =
        rdp[i] + std::log1p(-1 / a) - (std::log(delta) + std::log(a)) / (a - 1);
    best = std::min(best, std::max(0.0, eps));
  }
  return best;
}

double dp_sgd_epsilon(double q, double sigma, std::int64_t steps,
                      double delta) {
  CHORUS_CHECK(steps >= 0, "privacy: {} steps", steps);
  const auto& orders = default_orders();
  std::vector<double> rdp;
  for (double a : orders)
    rdp.push_back(static_cast<double>(steps) *
                  sampled_gaussian_rdp(q, sigma, a));
  return steps == 0 ? 0 : epsilon(orders, rdp, delta);
}

namespace {

// The smallest σ in [lo, hi] (to 0.1%) with eps_of(σ) ≤ epsilon, for an
// eps_of that falls as σ grows; lo when even lo fits. The caller checks hi.
template <typename EpsOf>
double smallest_sigma(double epsilon, double lo, double hi, EpsOf eps_of) {
  if (eps_of(lo) <= epsilon) return lo;
  while (hi - lo > 1e-3 * lo) {
    const double mid = 0.5 * (lo + hi);
    (eps_of(mid) <= epsilon ? hi : lo) = mid;
  }
  return hi;
}

void check_budget(double epsilon, double delta) {
  CHORUS_CHECK(epsilon > 0 && delta > 0 && delta < 1,
               "privacy: need epsilon > 0 and delta in (0, 1), got {} and {}",
               epsilon, delta);
}

}  // namespace

double dp_sgd_noise_multiplier(double epsilon, double q, std::int64_t steps,
                               double delta) {
  check_budget(epsilon, delta);
  const double hi = 1000;
  CHORUS_CHECK(dp_sgd_epsilon(q, hi, steps, delta) <= epsilon,
               "privacy: {} steps at sampling rate {} cannot stay within "
               "epsilon {} at delta {} (even with noise multiplier {}); "
               "train fewer epochs or on more examples",
               steps, q, epsilon, delta, hi);
  return smallest_sigma(epsilon, 0.05, hi, [&](double sigma) {
    return dp_sgd_epsilon(q, sigma, steps, delta);
  });
}

double gnmax_epsilon(double sigma, std::int64_t answers, double delta) {
  CHORUS_CHECK(answers >= 0, "privacy: {} answers", answers);
  if (answers == 0) return 0;
  const auto& orders = default_orders();
  std::vector<double> rdp;
  // Sensitivity √2: the Gaussian mechanism's α·Δ²/(2σ²) = α/σ².
  for (double a : orders)
    rdp.push_back(static_cast<double>(answers) * 2 * gaussian_rdp(sigma, a));
  return epsilon(orders, rdp, delta);
}

std::int64_t gnmax_max_answers(double sigma, double epsilon, double delta) {
  if (gnmax_epsilon(sigma, 1, delta) > epsilon) return 0;
  std::int64_t lo = 1, hi = 2;
  while (gnmax_epsilon(sigma, hi, delta) <= epsilon) {
    lo = hi;
    if (hi > (std::int64_t{1} << 60)) return hi;  // Effectively unlimited.
    hi *= 2;
  }
  while (hi - lo > 1) {  // ε(lo) ≤ epsilon < ε(hi).
    const auto mid = lo + (hi - lo) / 2;
    (gnmax_epsilon(sigma, mid, delta) <= epsilon ? lo : hi) = mid;
  }
  return lo;
}

double gnmax_sigma(double epsilon, std::int64_t answers, double delta) {
  check_budget(epsilon, delta);
  CHORUS_CHECK(answers > 0, "privacy: GNMax needs at least one answer, got {}",
               answers);
  const double hi = 1e7;
  CHORUS_CHECK(gnmax_epsilon(hi, answers, delta) <= epsilon,
               "privacy: {} GNMax answers cannot stay within epsilon {} at "
               "delta {} (even with sigma {})",
               answers, epsilon, delta, hi);
  return smallest_sigma(epsilon, 1e-2, hi, [&](double sigma) {
    return gnmax_epsilon(sigma, answers, delta);
  });
}

}  // namespace chorus::privacy
