#include "chorus/fusion/frugal.hpp"

#include <torch/torch.h>

#include <bit>
#include <cmath>
#include <limits>
#include <string>

#include "chorus/core/error.hpp"
#include "chorus/core/progress.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::fusion {
namespace {

using Mask = std::uint32_t;

std::vector<std::int64_t> members(Mask mask) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = 0; mask; ++i, mask >>= 1) {
    if (mask & 1u) out.push_back(i);
  }
  return out;
}

// For each row of `query`, the indices of its `k` nearest rows of `ref`
// (Euclidean), skipping row i of `ref` for query row i when `skip_self`.
// Ranked by |r|² − 2 q·r, which orders the rows of `ref` as the distance
// to q does (|q|² is the same for the whole row): one GEMM, no square
// root. In chunks of query rows small enough for the distances to stay in
// cache while topk reads them.
torch::Tensor nearest(const torch::Tensor& query, const torch::Tensor& ref,
                      std::int64_t k, bool skip_self) {
  constexpr std::int64_t kChunk = 256;
  k = std::min(k, ref.size(0) - (skip_self ? 1 : 0));
  auto ref_t = ref.t().contiguous();
  auto ref_sq = ref.pow(2).sum(1).unsqueeze(0);
  std::vector<torch::Tensor> out;
  for (std::int64_t i = 0; i < query.size(0); i += kChunk) {
    const auto end = std::min(query.size(0), i + kChunk);
    auto d = torch::addmm(ref_sq, query.slice(0, i, end), ref_t, /*beta=*/1,
                          /*alpha=*/-2);
    if (skip_self) {
      auto rows = torch::arange(end - i, torch::kLong);
      d.index_put_({rows, rows + i}, std::numeric_limits<float>::infinity());
    }
    out.push_back(std::get<1>(d.topk(k, /*dim=*/1, /*largest=*/false)));
  }
  return torch::cat(out);
}

}  // namespace

double FrugalPrediction::mean_experts() const {
  return queried.numel()
             ? queried.sum(1).to(torch::kDouble).mean().item<double>()
             : 0.0;
}

double FrugalPrediction::mean_cost() const {
  if (!queried.numel()) return 0.0;
  CHORUS_CHECK(costs.size() == static_cast<std::size_t>(queried.size(1)),
               "frugal: {} costs for {} experts", costs.size(),
               queried.size(1));
  auto c = torch::tensor(costs, torch::kDouble);
  return (queried.to(torch::kDouble) * c).sum(1).mean().item<double>();
}

FrugalFoe::FrugalFoe(FrugalOptions options) : options_(std::move(options)) {
  CHORUS_CHECK(options_.neighbours() > 0 && options_.knn_k() > 0,
               "frugal: neighbours and knn_k must be positive");
}

void FrugalFoe::fit(const std::vector<torch::Tensor>& answers,
                    const torch::Tensor& labels, std::int64_t num_classes,
                    const std::vector<torch::Tensor>& transfer) {
  CHORUS_CHECK(!answers.empty() && answers.size() <= 20,
               "frugal: needs 1 to 20 experts, got {}", answers.size());
  for (const auto& a : answers) {
    CHORUS_CHECK(a.size(0) == labels.size(0),
                 "frugal: {} answers but {} labels", a.size(0), labels.size(0));
  }
  CHORUS_CHECK(labels.size(0) > options_.knn_k(),
               "frugal: the fusion set needs more than knn_k = {} examples",
               options_.knn_k());
  CHORUS_CHECK(
      options_.costs().empty() || options_.costs().size() == answers.size(),
      "frugal: {} costs for {} experts", options_.costs().size(),
      answers.size());
  CHORUS_CHECK(options_.costs().empty() || options_.costs_by_name().empty(),
               "frugal: costs by position and by name are both given");
  CHORUS_CHECK(transfer.empty() || transfer.size() == answers.size(),
               "frugal: {} experts answered on V but {} on U", answers.size(),
               transfer.size());
  v_answers_ = answers;
  v_labels_ = labels;
  num_classes_ = num_classes;
  fusers_.clear();
  correct_.clear();
  est_answers_ = answers;
  est_labels_ = labels;
  if (!transfer.empty() && options_.estimate_on_transfer() &&
      transfer.front().size(0) > options_.knn_k()) {
    const Mask all = (Mask{1} << answers.size()) - 1;
    est_answers_ = transfer;
    est_labels_ = fuser(all).predict_proba(transfer).argmax(1);
  }
}

torch::Tensor FrugalFoe::subset_features(
    const std::vector<torch::Tensor>& answers, Mask mask) const {
  std::vector<torch::Tensor> parts;
  for (auto i : members(mask))
    parts.push_back(answers[static_cast<std::size_t>(i)]);
  return Foe::features(parts, options_.fuser().features());
}

std::unique_ptr<Foe> FrugalFoe::train_fuser(Mask mask, int threads) const {
  std::vector<torch::Tensor> parts;
  for (auto i : members(mask))
    parts.push_back(v_answers_[static_cast<std::size_t>(i)]);
  auto options = options_.fuser();
  if (threads > 0) options.threads(threads);
  auto foe = std::make_unique<Foe>(options);
  foe->fit(parts, v_labels_, num_classes_);
  return foe;
}

Foe& FrugalFoe::fuser(Mask mask) {
  auto it = fusers_.find(mask);
  if (it != fusers_.end()) return *it->second;
  return *fusers_.emplace(mask, train_fuser(mask, 0)).first->second;
}

torch::Tensor FrugalFoe::estimate_correct(Mask mask) const {
  auto f = subset_features(est_answers_, mask);
  auto nn = nearest(f, f, options_.knn_k(), /*skip_self=*/true);
  // Soft correctness: the share of a point's leave-one-out neighbours that
  // carry its label (smoother than the 0/1 kNN vote, so λ acts gradually).
  auto agree = est_labels_.index({nn}).eq(est_labels_.unsqueeze(1));
  return agree.to(torch::kFloat32).mean(1);
}

const torch::Tensor& FrugalFoe::loo_correct(Mask mask) {
  auto it = correct_.find(mask);
  if (it != correct_.end()) return it->second;
  return correct_.emplace(mask, estimate_correct(mask)).first->second;
}

void FrugalFoe::prepare_fusers(const std::vector<Mask>& masks) {
  std::vector<Mask> todo;
  for (auto m : masks)
    if (!fusers_.count(m)) todo.push_back(m);
  std::vector<std::unique_ptr<Foe>> trained(todo.size());
  const int threads = options_.fuser().threads();
  progress::Bar bar("fit: frugal fusers of expert subsets",
                    static_cast<double>(todo.size()), "subsets");
  run_jobs(static_cast<std::int64_t>(todo.size()),
           threads > 0 ? threads : torch::get_num_threads(),
           [&](std::int64_t i, int job_threads) {
             trained[static_cast<std::size_t>(i)] =
                 train_fuser(todo[static_cast<std::size_t>(i)], job_threads);
             bar.advance(1);
           });
  for (std::size_t i = 0; i < todo.size(); ++i)
    fusers_.emplace(todo[i], std::move(trained[i]));
}

double expert_cost(const ExpertCosts& costs, const std::string& name) {
  const auto it = costs.find(name);
  return it == costs.end() ? 1.0 : it->second;
}

std::vector<double> FrugalFoe::resolve_costs(const QueryOracle& oracle) const {
  const auto& experts = oracle.experts();
  std::vector<double> costs = options_.costs();
  if (costs.empty()) {
    for (const auto& e : experts)
      costs.push_back(expert_cost(options_.costs_by_name(), e.name));
  }
  for (std::size_t i = 0; i < costs.size(); ++i) {
    CHORUS_CHECK(std::isfinite(costs[i]) && costs[i] > 0,
                 "frugal: the cost of expert '{}' must be finite and "
                 "positive, got {}",
                 i < experts.size() ? experts[i].name : std::to_string(i),
                 costs[i]);
  }
  return costs;
}

FrugalPrediction FrugalFoe::predict(QueryOracle& oracle,
                                    const torch::Tensor& inputs,
                                    std::optional<double> lambda_override) {
  CHORUS_CHECK_CODE(v_labels_.defined(), Code::kFailedPrecondition,
                    "frugal: predict before fit");
  const auto k = static_cast<std::int64_t>(v_answers_.size());
  CHORUS_CHECK(oracle.num_experts() == k,
               "frugal: fitted on {} experts, the oracle has {}", k,
               oracle.num_experts());
  const double lambda = lambda_override.value_or(options_.lambda());
  const auto costs = resolve_costs(oracle);
  auto cost = [&](std::int64_t i) {
    return costs[static_cast<std::size_t>(i)];
  };
  const std::int64_t n = inputs.size(0);

  // Answers gathered so far; rows of experts not queried stay zero.
  std::vector<torch::Tensor> answers;
  for (const auto& info : oracle.experts()) {
    answers.push_back(
        torch::zeros({n, static_cast<std::int64_t>(info.labels.size())}));
  }
  auto ask = [&](std::int64_t expert, const torch::Tensor& rows) {
    answers[expert].index_copy_(
        0, rows, oracle.query(expert, inputs.index_select(0, rows)));
  };

  // Start from the expert whose own outputs best predict V's labels, less
  // λ·cost (with equal costs: the best expert).
  std::int64_t first = 0;
  double best = -std::numeric_limits<double>::infinity();
  for (std::int64_t i = 0; i < k; ++i) {
    double score =
        loo_correct(Mask{1} << i).to(torch::kDouble).mean().item<double>() -
        lambda * cost(i);
    if (score > best) best = score, first = i;
  }
  std::vector<Mask> mask(static_cast<std::size_t>(n), Mask{1} << first);
  std::vector<bool> done(static_cast<std::size_t>(n), false);
  ask(first, torch::arange(n, torch::kLong));

  for (std::int64_t step = 1; step < k; ++step) {
    // Group the undecided inputs by their current subset.
    std::map<Mask, std::vector<std::int64_t>> groups;
    for (std::int64_t r = 0; r < n; ++r) {
      if (!done[r]) groups[mask[r]].push_back(r);
    }
    if (groups.empty()) break;
    std::map<std::pair<Mask, std::int64_t>, std::vector<std::int64_t>> to_ask;
    for (auto& [m, rows_vec] : groups) {
      auto rows = torch::tensor(rows_vec, torch::kLong);
      std::vector<torch::Tensor> sub;
      for (auto& a : answers) sub.push_back(a.index_select(0, rows));
      // Neighbours in V, in the space of the experts queried so far.
      auto nn =
          nearest(subset_features(sub, m), subset_features(est_answers_, m),
                  options_.neighbours(), /*skip_self=*/false);
      auto err_now =
          1.0 - loo_correct(m).index({nn}).to(torch::kFloat32).mean(1);
      auto best_gain = torch::full({rows.size(0)}, -1e9);
      auto best_k = torch::full({rows.size(0)}, -1, torch::kLong);
      for (std::int64_t c = 0; c < k; ++c) {
        if (m & (Mask{1} << c)) continue;
        auto err = 1.0 - loo_correct(m | (Mask{1} << c))
                             .index({nn})
                             .to(torch::kFloat32)
                             .mean(1);
        auto gain = (err_now - err) - lambda * cost(c);
        auto better = gain.gt(best_gain);
        best_gain = torch::where(better, gain, best_gain);
        best_k = torch::where(better, torch::full_like(best_k, c), best_k);
      }
      auto gain_acc = best_gain.accessor<float, 1>();
      auto k_acc = best_k.accessor<std::int64_t, 1>();
      for (std::int64_t j = 0; j < rows.size(0); ++j) {
        const auto r = rows_vec[static_cast<std::size_t>(j)];
        if (k_acc[j] < 0 || gain_acc[j] <= 0) {
          done[r] = true;
        } else {
          to_ask[{m, k_acc[j]}].push_back(r);
        }
      }
    }
    if (to_ask.empty()) break;
    for (auto& [key, rows_vec] : to_ask) {
      ask(key.second, torch::tensor(rows_vec, torch::kLong));
      for (auto r : rows_vec) mask[r] |= Mask{1} << key.second;
    }
  }

  // Predict each input with the fuser of the subset it ended with.
  FrugalPrediction out;
  out.probs = torch::zeros({n, num_classes_});
  out.queried = torch::zeros({n, k}, torch::kBool);
  out.costs = costs;
  std::map<Mask, std::vector<std::int64_t>> final_groups;
  for (std::int64_t r = 0; r < n; ++r) final_groups[mask[r]].push_back(r);
  {
    std::vector<Mask> used;
    for (const auto& [m, rows_vec] : final_groups) used.push_back(m);
    prepare_fusers(used);
  }
  for (auto& [m, rows_vec] : final_groups) {
    auto rows = torch::tensor(rows_vec, torch::kLong);
    std::vector<torch::Tensor> sub;
    for (auto i : members(m)) sub.push_back(answers[i].index_select(0, rows));
    out.probs.index_copy_(0, rows, fuser(m).predict_proba(sub));
    auto q = out.queried.index_select(0, rows);
    for (auto i : members(m)) q.select(1, i).fill_(true);
    out.queried.index_copy_(0, rows, q);
  }
  return out;
}

}  // namespace chorus::fusion
