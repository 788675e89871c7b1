#include "chorus/fusion/robust.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <optional>

#include "chorus/core/error.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/random.hpp"

namespace chorus::fusion {

std::vector<ExpertTrust> judge_experts(
    const std::vector<torch::Tensor>& answers,
    const std::vector<ExpertInfo>& experts, std::int64_t num_classes,
    const torch::Tensor& labels, double fraction) {
  CHORUS_CHECK(answers.size() == experts.size(),
               "robust: {} answers for {} experts", answers.size(),
               experts.size());
  CHORUS_CHECK(fraction >= 0 && fraction <= 1,
               "robust: the fraction {} is not in [0, 1]", fraction);
  const auto k = answers.size();
  std::vector<ExpertTrust> out(k);
  if (k == 0) return out;
  const std::int64_t n = answers.front().size(0);
  const bool labelled = labels.defined() && labels.numel() == n && n > 0;
  for (std::size_t i = 0; i < k; ++i) {
    const auto& e = experts[i];
    CHORUS_CHECK(
        answers[i].dim() == 2 && answers[i].size(0) == n &&
            answers[i].size(1) == static_cast<std::int64_t>(e.labels.size()) &&
            !e.labels.empty(),
        "robust: expert '{}' answered [{}] for {} rows over {} labels", e.name,
        fmt::join(answers[i].sizes(), ", "), n, e.labels.size());
    out[i].name = e.name;
    out[i].chance = 1.0 / static_cast<double>(e.labels.size());
  }
  auto lifted = lift_all(answers, experts, num_classes);

  // Expert i's agreement: with V's labels on the rows of its classes when
  // there are enough of them; otherwise with the consensus (B+) of the
  // experts still trusted other than i, on the rows where that consensus
  // picks one of i's classes.
  auto judge = [&](std::size_t i) {
    auto& t = out[i];
    auto own = torch::tensor(experts[i].labels, torch::kLong);
    auto top = own.index_select(0, answers[i].argmax(1));  // global labels
    torch::Tensor truth, rows;
    if (labelled) {
      rows = torch::isin(labels, own).nonzero().flatten();
      if (rows.numel() >= kMinLabelledRows) {
        truth = labels.index_select(0, rows);
        t.against = "labels";
      }
    }
    if (!truth.defined()) {
      auto others = torch::zeros({n, num_classes});
      for (std::size_t j = 0; j < k; ++j)
        if (j != i && out[j].trusted) others += lifted[j];
      auto pick = others.argmax(1);
      rows = torch::isin(pick, own).nonzero().flatten();
      truth = pick.index_select(0, rows);
      t.against = "consensus";
    }
    t.rows = rows.numel();
    // Too few rows are no evidence either way: such an expert is trusted.
    t.judged = t.rows >= kMinLabelledRows;
    t.agreement = t.rows == 0 ? t.chance
                              : top.index_select(0, rows)
                                    .eq(truth)
                                    .to(torch::kDouble)
                                    .mean()
                                    .item<double>();
  };

  // One at a time, the least agreeing expert below its bar is left out and
  // the others judged again without it (its answers no longer sway the
  // consensus); at most ⌊k/2⌋ are.
  for (std::size_t left = 0;; ++left) {
    for (std::size_t i = 0; i < k; ++i)
      if (out[i].trusted) judge(i);
    std::vector<double> agreements;
    for (const auto& t : out)
      if (t.judged) agreements.push_back(t.agreement);
    if (agreements.empty()) break;
    const auto mid = agreements.size() / 2;
    std::nth_element(agreements.begin(),
                     agreements.begin() + static_cast<long>(mid),
                     agreements.end());
    const double median = agreements[mid];
    std::optional<std::size_t> worst;
    double worst_margin = 0;
    for (std::size_t i = 0; i < k; ++i) {
      const auto& t = out[i];
      const double bar = t.chance + fraction * (median - t.chance);
      if (t.trusted && t.judged && t.agreement < bar &&
          (!worst || t.agreement - bar < worst_margin)) {
        worst = i;
        worst_margin = t.agreement - bar;
      }
    }
    if (!worst || left >= k / 2) break;
    auto& t = out[*worst];
    t.trusted = false;
    t.reason = fmt::format(
        "its answers agree with {} on {:.2f} of {} rows of V (chance {:.2f}, "
        "the experts' median {:.2f}, the bar {:.2f})",
        t.against == "labels" ? "V's labels" : "the other experts", t.agreement,
        t.rows, t.chance, median, t.chance + fraction * (median - t.chance));
  }
  return out;
}

torch::Tensor uninformative_answer(std::int64_t n, std::int64_t num_labels) {
  CHORUS_CHECK(num_labels > 0, "robust: an expert without labels");
  return torch::full({n, num_labels}, 1.0 / static_cast<double>(num_labels),
                     torch::kFloat32);
}

MaskedOracle::MaskedOracle(QueryOracle& inner, std::vector<bool> left_out)
    : inner_(inner), left_out_(std::move(left_out)) {
  CHORUS_CHECK(
      static_cast<std::int64_t>(left_out_.size()) == inner_.num_experts(),
      "robust: {} verdicts for {} experts", left_out_.size(),
      inner_.num_experts());
}

std::vector<torch::Tensor> MaskedOracle::query_all(
    const torch::Tensor& inputs) {
  if (std::none_of(left_out_.begin(), left_out_.end(),
                   [](bool b) { return b; })) {
    return inner_.query_all(inputs);
  }
  return QueryOracle::query_all(inputs);
}

torch::Tensor MaskedOracle::do_query(std::int64_t expert,
                                     const torch::Tensor& inputs) {
  if (left_out_.at(static_cast<std::size_t>(expert))) {
    return uninformative_answer(
        inputs.size(0),
        static_cast<std::int64_t>(experts()[expert].labels.size()));
  }
  return inner_.query(expert, inputs);
}

PoisonedOracle::PoisonedOracle(QueryOracle& inner, std::int64_t poisoned,
                               std::uint64_t seed)
    : inner_(inner), poisoned_(poisoned), gen_(make_generator(seed)) {}

torch::Tensor PoisonedOracle::do_query(std::int64_t expert,
                                       const torch::Tensor& inputs) {
  auto honest = inner_.query(expert, inputs);
  const auto m = honest.size(1);
  if (expert != poisoned_ || m < 2) return honest;
  auto shift = torch::randint(1, m, {honest.size(0)}, gen_, torch::kLong);
  return torch::one_hot((honest.argmax(1) + shift).remainder(m), m)
      .to(torch::kFloat32);
}

}  // namespace chorus::fusion
