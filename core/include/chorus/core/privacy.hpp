#pragma once

#include <cstdint>
#include <vector>

/// Rényi-DP accounting (ALGORITHMS.md §6): the RDP of the Gaussian and the
/// Poisson-sampled Gaussian mechanisms (Mironov, Talwar, Zhang 2019),
/// composed over steps or answers, and converted to (ε, δ) with the
/// conversion of Balle et al. 2020 (Theorem 21; the one dp_accounting and
/// Opacus use): ε = min_α RDP(α) + log((α−1)/α) − (log δ + log α)/(α − 1).
/// No torch.
namespace chorus::privacy {

/// The orders α the accountant evaluates: 1.25, 1.5, 1.75, 2, 2.5, ..., 10
/// by halves, 11 ... 64, 128, 256.
const std::vector<double>& default_orders();

/// RDP at order `alpha` of the Gaussian mechanism with noise multiplier
/// `sigma` (noise std over L2 sensitivity): α / (2σ²).
double gaussian_rdp(double sigma, double alpha);

/// RDP at order `alpha` of one step of the Poisson-sampled Gaussian
/// mechanism with sampling rate `q` and noise multiplier `sigma`. Exact
/// (the binomial expansion of Mironov et al. 2019, §3.3) for integer α;
/// for fractional α with 0 < q < 1 it is +inf (not evaluated: the integer
/// orders carry the bound). q = 1 is `gaussian_rdp`, q = 0 is 0.
double sampled_gaussian_rdp(double q, double sigma, double alpha);

/// The smallest ε over `orders` for RDP values `rdp` (one per order) at
/// `delta`; +inf when every order is infinite.
double epsilon(const std::vector<double>& orders,
               const std::vector<double>& rdp, double delta);

/// ε after `steps` steps of the sampled Gaussian (DP-SGD's accountant).
double dp_sgd_epsilon(double q, double sigma, std::int64_t steps, double delta);

/// The smallest noise multiplier σ (to 0.1%) with which `steps` steps at
/// sampling rate `q` stay within (`epsilon`, `delta`). Throws
/// `chorus::Error` (INVALID_ARGUMENT) when even σ = 1000 does not.
double dp_sgd_noise_multiplier(double epsilon, double q, std::int64_t steps,
                               double delta);

/// One-teacher GNMax (Papernot et al. 2018): each noisy-argmax answer is
/// a Gaussian mechanism of L2 sensitivity √2, data-independent RDP α/σ²;
/// ε after `answers` answers at `delta`.
double gnmax_epsilon(double sigma, std::int64_t answers, double delta);

/// The most answers GNMax with `sigma` gives within (`epsilon`, `delta`).
std::int64_t gnmax_max_answers(double sigma, double epsilon, double delta);

/// The smallest σ (to 0.1%) with which `answers` GNMax answers stay within
/// (`epsilon`, `delta`): what a node must add to its votes to give that
/// many answers under that budget. Throws `chorus::Error`
/// (INVALID_ARGUMENT) for a budget no σ up to 10⁷ meets.
double gnmax_sigma(double epsilon, std::int64_t answers, double delta);

}  // namespace chorus::privacy
