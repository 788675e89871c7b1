#include "chorus/core/privacy.hpp"

#include <cmath>

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"

namespace privacy = chorus::privacy;

TEST_CASE("privacy: at sampling rate 1 the RDP is the Gaussian's α/(2σ²)") {
  for (double sigma : {0.5, 1.0, 2.71828}) {
    for (double alpha : {1.5, 2.0, 3.14159, 32.0}) {
      CHECK(privacy::sampled_gaussian_rdp(1.0, sigma, alpha) ==
            doctest::Approx(alpha / (2 * sigma * sigma)));
    }
  }
  CHECK(privacy::sampled_gaussian_rdp(0.0, 1.0, 8) == 0);
  CHECK(std::isinf(privacy::gaussian_rdp(0.0, 2)));
}

// Published values: google/differential-privacy, python/dp_accounting/
// dp_accounting/rdp/rdp_privacy_accountant_test.py,
// test_compute_rdp_poisson_sampled_gaussian (q = 0.01, σ = 2.5, 50 steps;
// its integer orders) and test_compute_epsilon_delta_pure_dp.
TEST_CASE("privacy: the sampled Gaussian matches dp_accounting's values") {
  const double q = 0.01, sigma = 2.5;
  const std::pair<double, double> expected[] = {
      {5, 2.18075656e-03}, {50, 2.38460375e-02}, {100, 1.67416308e02}};
  for (const auto& [alpha, rdp] : expected) {
    CAPTURE(alpha);
    CHECK(50 * privacy::sampled_gaussian_rdp(q, sigma, alpha) ==
          doctest::Approx(rdp).epsilon(1e-4));
  }
  // Fractional orders are left to the integer ones when q < 1.
  CHECK(std::isinf(privacy::sampled_gaussian_rdp(q, sigma, 2.5)));
}

TEST_CASE("privacy: RDP converts to (ε, δ) as dp_accounting does") {
  std::vector<double> orders, rdp;
  for (int a = 2; a <= 32; ++a) {
    orders.push_back(a);
    rdp.push_back(1.1);  // Constant: pure DP.
  }
  CHECK(privacy::epsilon(orders, rdp, 1e-5) ==
        doctest::Approx(1.32783806176).epsilon(1e-9));
  CHECK_THROWS_AS(privacy::epsilon(orders, rdp, 0), chorus::Error);
  CHECK_THROWS_AS(privacy::epsilon(orders, {1.0}, 1e-5), chorus::Error);
}

TEST_CASE("privacy: DP-SGD's ε grows with steps and falls with noise") {
  const double a = privacy::dp_sgd_epsilon(0.01, 1.1, 1000, 1e-5);
  const double b = privacy::dp_sgd_epsilon(0.01, 1.1, 4000, 1e-5);
  const double c = privacy::dp_sgd_epsilon(0.01, 2.0, 4000, 1e-5);
  CHECK(a > 0);
  CHECK(b > a);
  CHECK(c < b);
  CHECK(privacy::dp_sgd_epsilon(0.01, 1.1, 0, 1e-5) == 0);
}

TEST_CASE("privacy: GNMax's budget is the most answers within ε") {
  const double sigma = 40, eps = 3, delta = 1e-5;
  const auto n = privacy::gnmax_max_answers(sigma, eps, delta);
  REQUIRE(n > 1);
  CHECK(privacy::gnmax_epsilon(sigma, n, delta) <= eps);
  CHECK(privacy::gnmax_epsilon(sigma, n + 1, delta) > eps);
  // One answer is the Gaussian mechanism of sensitivity √2: RDP α/σ².
  std::vector<double> orders = privacy::default_orders(), rdp;
  for (double alpha : orders) rdp.push_back(alpha / (sigma * sigma));
  CHECK(privacy::gnmax_epsilon(sigma, 1, delta) ==
        doctest::Approx(privacy::epsilon(orders, rdp, delta)));
  // Too little noise for even one answer.
  CHECK(privacy::gnmax_max_answers(0.5, 0.1, delta) == 0);
}

TEST_CASE("privacy: GNMax's sigma for a number of answers is the smallest") {
  const double delta = 1e-5;
  for (std::int64_t answers : {1, 500, 20000}) {
    for (double eps : {1.0, 3.0, 8.0}) {
      const double sigma = privacy::gnmax_sigma(eps, answers, delta);
      CHECK(privacy::gnmax_epsilon(sigma, answers, delta) <= eps);
      CHECK(privacy::gnmax_epsilon(sigma * 0.99, answers, delta) > eps);
      // And the budget it gives back holds at least that many answers.
      CHECK(privacy::gnmax_max_answers(sigma, eps, delta) >= answers);
    }
  }
  // Twice the answers need more noise, by about √2 for many answers.
  const double a = privacy::gnmax_sigma(3, 10000, delta);
  const double b = privacy::gnmax_sigma(3, 20000, delta);
  CHECK(b / a == doctest::Approx(std::sqrt(2.0)).epsilon(0.05));
  CHECK_THROWS_WITH(privacy::gnmax_sigma(0, 10, delta),
                    doctest::Contains("need epsilon > 0"));
}

TEST_CASE(
    "privacy: the noise multiplier for a target ε is the smallest that fits") {
  const double q = 64.0 / 4000, delta = 1e-5;
  const std::int64_t steps = 3 * 4000 / 64;
  for (double eps : {1.0, 3.0, 8.0}) {
    const double sigma = privacy::dp_sgd_noise_multiplier(eps, q, steps, delta);
    CHECK(privacy::dp_sgd_epsilon(q, sigma, steps, delta) <= eps);
    // 1% less noise overspends.
    CHECK(privacy::dp_sgd_epsilon(q, sigma * 0.99, steps, delta) > eps);
  }
  // More privacy needs more noise.
  CHECK(privacy::dp_sgd_noise_multiplier(1, q, steps, delta) >
        privacy::dp_sgd_noise_multiplier(8, q, steps, delta));
  CHECK_THROWS_WITH(privacy::dp_sgd_noise_multiplier(1e-6, 1, 100000, delta),
                    doctest::Contains("cannot stay within epsilon"));
}
