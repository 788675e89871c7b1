#include "chorus/fusion/algorithms.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <ranges>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/train.hpp"

namespace chorus::fusion {

std::vector<torch::Tensor> FusionData::fusion_answers() const {
  std::vector<torch::Tensor> out;
  for (const auto& a : answers) out.push_back(a.index_select(0, fusion_index));
  return out;
}

torch::Tensor FusionData::fusion_inputs() const {
  return transfer.index_select(0, fusion_index);
}

std::vector<torch::Tensor> FusionData::lifted_answers() const {
  return lift_all(answers, experts, num_classes);
}

void FusionData::validate(bool needs_labels) const {
  CHORUS_CHECK(num_classes > 0, "fusion data: no label space");
  CHORUS_CHECK(!answers.empty() && answers.size() == experts.size(),
               "fusion data: {} answers for {} experts", answers.size(),
               experts.size());
  CHORUS_CHECK(transfer.defined() && transfer.size(0) > 0,
               "fusion data: empty transfer pool");
  for (std::size_t i = 0; i < answers.size(); ++i) {
    CHORUS_CHECK(answers[i].dim() == 2 &&
                     answers[i].size(0) == transfer.size(0) &&
                     answers[i].size(1) ==
                         static_cast<std::int64_t>(experts[i].labels.size()),
                 "fusion data: expert '{}' answered [{}] for {} inputs over {} "
                 "labels",
                 experts[i].name, fmt::join(answers[i].sizes(), ", "),
                 transfer.size(0), experts[i].labels.size());
  }
  if (needs_labels) {
    CHORUS_CHECK(fusion_index.defined() && fusion_index.numel() > 0 &&
                     fusion_labels.defined() &&
                     fusion_labels.numel() == fusion_index.numel(),
                 "this algorithm needs a labelled fusion set V");
  }
}

bool Fuser::save(const std::filesystem::path& path) const {
  auto fused = fused_model();
  if (!fused) return false;
  save_fused_model(*fused, path);
  return true;
}

std::string Fuser::spec() const {
  auto fused = fused_model();
  return fused ? fused->spec.to_string() : std::string();
}

namespace {

class EnsembleFuser : public Fuser {
 public:
  explicit EnsembleFuser(bool use_max) : use_max_(use_max) {}
  std::string name() const override { return use_max_ ? "bmax" : "bplus"; }
  bool needs_experts() const override { return true; }
  void fit(const FusionData& data) override { data.validate(false); }
  torch::Tensor predict(QueryOracle& oracle, const torch::Tensor& x) override {
    auto lifted = lift_all(oracle.query_all(x), oracle);
    return use_max_ ? ensemble_max(lifted) : ensemble_sum(lifted);
  }
  std::optional<FusedModel> fused_model() const override {
    return std::nullopt;
  }

 private:
  bool use_max_;
};

// Distillation into a student that needs no expert once trained: from B+
// ("distill") or from the FoE fuser ("foe-distill").
class StudentFuser : public Fuser {
 public:
  StudentFuser(bool from_foe, const AlgorithmOptions& o)
      : from_foe_(from_foe), options_(o) {}
  std::string name() const override {
    return from_foe_ ? "foe-distill" : "distill";
  }
  bool needs_experts() const override { return false; }
  void fit(const FusionData& data) override {
    data.validate(/*needs_labels=*/from_foe_);
    if (!from_foe_) {
      student_ = distill(data.transfer, ensemble_sum(data.lifted_answers()),
                         options_.distill(), name())
                     .model;
      return;
    }
    Foe foe(options_.foe());
    foe.fit(data.fusion_answers(), data.fusion_labels, data.num_classes,
            data.answers);
    student_ = distill(data.transfer, foe.predict_proba(data.answers),
                       options_.distill(), name(), data.fusion_inputs(),
                       data.fusion_labels)
                   .model;
  }
  torch::Tensor predict(QueryOracle&, const torch::Tensor& x) override {
    CHORUS_CHECK_CODE(student_.has_value(), Code::kFailedPrecondition,
                      "{}: predict before fit", name());
    return predict_proba(*student_->model, x);
  }
  std::optional<FusedModel> fused_model() const override { return student_; }

 private:
  bool from_foe_;
  AlgorithmOptions options_;
  std::optional<FusedModel> student_;
};

class FoeFuser : public Fuser {
 public:
  explicit FoeFuser(const AlgorithmOptions& o) : foe_(o.foe()) {}
  std::string name() const override { return "foe"; }
  bool needs_experts() const override { return true; }
  void fit(const FusionData& data) override {
    data.validate(/*needs_labels=*/true);
    foe_.fit(data.fusion_answers(), data.fusion_labels, data.num_classes,
             data.answers);
    fitted_ = true;
  }
  torch::Tensor predict(QueryOracle& oracle, const torch::Tensor& x) override {
    return foe_.predict_proba(oracle.query_all(x));
  }
  std::optional<FusedModel> fused_model() const override {
    if (!fitted_) return std::nullopt;
    return foe_.to_fused_model();
  }

 private:
  Foe foe_;
  bool fitted_ = false;
};

class FrugalFuser : public Fuser {
 public:
  explicit FrugalFuser(const AlgorithmOptions& o) : frugal_(o.frugal()) {}
  std::string name() const override { return "frugal"; }
  bool needs_experts() const override { return true; }
  void fit(const FusionData& data) override {
    data.validate(/*needs_labels=*/true);
    frugal_.fit(data.fusion_answers(), data.fusion_labels, data.num_classes,
                data.answers);
  }
  torch::Tensor predict(QueryOracle& oracle, const torch::Tensor& x) override {
    return frugal_.predict(oracle, x).probs;
  }
  std::optional<FusedModel> fused_model() const override {
    return std::nullopt;
  }
  FrugalFoe& model() { return frugal_; }

 private:
  FrugalFoe frugal_;
};

// FoE's selection form: a classifier over experts, trained on V's inputs
// to name the expert to trust, so that only the chosen expert answers.
// Its target for a point of V is the distribution over experts of the
// probability each gives the true label (experts that do not know the
// label give it none).
class SelectFuser : public Fuser {
 public:
  explicit SelectFuser(const AlgorithmOptions& o) : options_(o) {}
  std::string name() const override { return "foe-select"; }
  bool needs_experts() const override { return true; }
  void fit(const FusionData& data) override {
    data.validate(/*needs_labels=*/true);
    auto lifted =
        lift_all(data.fusion_answers(), data.experts, data.num_classes);
    // [|V|, K]: each expert's probability of the true label.
    auto truth = data.fusion_labels.unsqueeze(1);
    std::vector<torch::Tensor> columns;
    for (const auto& l : lifted) columns.push_back(l.gather(1, truth));
    auto trust = torch::cat(columns, 1) + 1e-3;
    auto targets = normalise_rows(trust);
    const auto& d = options_.distill();
    spec_.input_shape = data.transfer.sizes().slice(1).vec();
    spec_.arch = resolve_architecture(d.arch(), spec_.input_shape);
    spec_.num_classes = static_cast<std::int64_t>(data.experts.size());
    auto gen = make_generator(options_.seed());
    selector_ = make_classifier(spec_, gen);
    train(*selector_, data.fusion_inputs(), targets,
          TrainOptions()
              .epochs(std::max<std::int64_t>(d.epochs(), 30))
              .batch_size(64)
              .lr(d.lr())
              .stop(options_.stop())
              .seed(options_.seed())
              .threads(options_.threads())
              .device(options_.device()));
  }
  torch::Tensor predict(QueryOracle& oracle, const torch::Tensor& x) override {
    CHORUS_CHECK_CODE(selector_ != nullptr, Code::kFailedPrecondition,
                      "foe-select: predict before fit");
    auto choice = predict_proba(*selector_, x).argmax(1);
    auto out = torch::zeros({x.size(0), oracle.num_classes()});
    for (std::int64_t k = 0; k < oracle.num_experts(); ++k) {
      auto rows = choice.eq(k).nonzero().flatten();
      if (rows.numel() == 0) continue;
      const auto& labels = oracle.experts()[static_cast<std::size_t>(k)].labels;
      out.index_copy_(0, rows,
                      lift(oracle.query(k, x.index_select(0, rows)), labels,
                           oracle.num_classes()));
    }
    return out;
  }
  std::optional<FusedModel> fused_model() const override {
    if (!selector_) return std::nullopt;
    return FusedModel{.algorithm = "foe-select",
                      .spec = spec_,
                      .attributes = {},
                      .model = selector_};
  }

 private:
  AlgorithmOptions options_;
  ModelSpec spec_;
  std::shared_ptr<ClassifierImpl> selector_;
};

// tae: the experts as distributions over shared prototypes (ALGORITHMS.md
// §4). Its fused predictor for the whole label space is q_λ(w) adapted to
// the all-classes task with up to 10 examples per class of V (the
// coordinator's own labelled shots) and the prototypes' votes relabelled by
// them; without V, the prior p_γ(w|τ) with the votes relabelled by the
// experts' union answer on the transfer pool.
class TaeFuser : public Fuser {
 public:
  explicit TaeFuser(const AlgorithmOptions& o) : options_(o) {}
  std::string name() const override { return "tae"; }
  bool needs_experts() const override { return false; }
  void fit(const FusionData& data) override {
    data.validate(/*needs_labels=*/false);
    const auto c = data.num_classes;
    const auto dim = data.transfer[0].numel();
    auto tae_options = options_.tae();
    tae_options.seed(options_.seed()).threads(options_.threads());
    // Images [C, H, W]: the encoders of the input may be convolutional.
    if (data.transfer.dim() == 4)
      tae_options.network().image_shape(data.transfer.sizes().slice(1).vec());
    model_.emplace(dim, c, c, tae_options);
    TaeData r;
    r.inputs = data.transfer;
    r.answers = data.lifted_answers();
    for (const auto& e : data.experts)
      r.tasks.push_back(task_descriptor(e.labels, c));
    model_->train(r);
    model_->set_labels(data.label_names);
    auto all = torch::ones({c});
    q_ = model_->prior(all);
    votes_ = head_weight_ = head_bias_ = torch::Tensor();
    std::string source = "prior of all outputs";
    if (data.fusion_index.defined() && data.fusion_index.numel() > 0) {
      // Up to 10 shots per class from V.
      std::vector<std::int64_t> rows;
      std::vector<int> per_class(static_cast<std::size_t>(c), 0);
      for (std::int64_t i = 0; i < data.fusion_labels.numel(); ++i) {
        const auto y = data.fusion_labels[i].item<std::int64_t>();
        if (per_class[static_cast<std::size_t>(y)]++ < 10) rows.push_back(i);
      }
      auto idx = torch::tensor(rows, torch::kLong);
      auto x = data.fusion_inputs().index_select(0, idx);
      auto y = data.fusion_labels.index_select(0, idx);
      auto adapted = model_->adapt(all, x, y);
      q_ = adapted.posterior;
      votes_ = adapted.votes;
      head_weight_ = adapted.head_weight;
      head_bias_ = adapted.head_bias;
      source = fmt::format(
          "adapted to every output on the coordinator's V ({} labelled "
          "inputs)",
          rows.size());
    } else {
      // No labelled set: the prototypes are relabelled, and the features
      // head fitted, by what the experts said of the transfer pool (their
      // union answer as soft labels).
      auto soft = union_answer(r.answers);
      if (options_.tae().adaptation().relabel()) {
        votes_ = model_->relabel(r.inputs, soft, q_);
        source = "prior of all outputs, prototypes relabelled on U";
      }
      if (model_->reads_out_features({})) {
        std::tie(head_weight_, head_bias_) = model_->fit_head(r.inputs, soft);
        source = "prior of all outputs, features head fitted on U";
      }
    }
    // Saved with the model: whoever predicts with its file alone predicts
    // as the coordinator does.
    model_->set_default_task(TaeTask{.q = q_,
                                     .votes = votes_,
                                     .head_weight = head_weight_,
                                     .head_bias = head_bias_,
                                     .source = source});
  }
  torch::Tensor predict(QueryOracle&, const torch::Tensor& x) override {
    CHORUS_CHECK_CODE(model_.has_value(), Code::kFailedPrecondition,
                      "tae: predict before fit");
    return model_->predict(x, model_->default_task());
  }
  std::optional<FusedModel> fused_model() const override {
    return std::nullopt;
  }
  bool save(const std::filesystem::path& path) const override {
    if (!model_) return false;
    model_->save(path);
    return true;
  }
  std::string spec() const override {
    return model_ ? fmt::format("tae outputs={} w={} z={} prototypes={}",
                                model_->outputs(),
                                model_->options().network().w_dim(),
                                model_->options().network().z_dim(),
                                model_->options().network().prototypes())
                  : std::string();
  }
  TaeModel& model() {
    CHORUS_CHECK_CODE(model_.has_value(), Code::kFailedPrecondition,
                      "tae: not fitted");
    return *model_;
  }

 private:
  AlgorithmOptions options_;
  std::optional<TaeModel> model_;
  WDistribution q_;
  torch::Tensor votes_;  ///< Relabelled by V's shots; undefined without V.
  torch::Tensor head_weight_, head_bias_;  ///< The features readout's head.
};

// dro: a meta-learned initialisation from white-box imitators of the
// black boxes (ALGORITHMS.md §5). The imitators share one architecture and
// one starting point; their heads are as wide as the widest task, a
// narrower expert's extra outputs taught to be zero. What is saved and
// pushed is θ_init, for nodes to adapt to their tasks; the coordinator's own
// predictor is θ_init adapted to the whole label space with V.
class DroFuser : public Fuser {
 public:
  explicit DroFuser(const AlgorithmOptions& o) : options_(o) {}
  std::string name() const override { return "dro"; }
  bool needs_experts() const override { return false; }
  void fit(const FusionData& data) override {
    data.validate(/*needs_labels=*/false);
    const auto& o = options_.dro();
    std::int64_t ways = 2;
    for (const auto& e : data.experts)
      ways = std::max<std::int64_t>(ways, e.labels.size());
    // The one architecture of every model fused.
    ModelSpec spec;
    spec.input_shape = data.transfer.sizes().slice(1).vec();
    spec.arch = resolve_architecture(o.imitator().arch(), spec.input_shape);
    spec.num_classes = ways;
    if (spec.arch == "mlp") spec.hidden = o.imitator().hidden();
    const auto layers = layer_sizes(*make_classifier(spec));
    std::int64_t total = 0;
    for (auto l : layers) total += l;
    std::vector<torch::Tensor> models;
    std::int64_t shared = 0;
    for (std::size_t i = 0; i < data.answers.size(); ++i) {
      const auto& name = data.experts[i].name;
      // A node that shared its own weights, of the chosen architecture:
      // those, not an imitator.
      if (auto w = data.shared_weights.find(name);
          w != data.shared_weights.end()) {
        const auto theirs = ModelSpec::parse(w->second.first);
        const auto& flat = w->second.second;
        if (theirs.arch == spec.arch &&
            theirs.input_shape == spec.input_shape &&
            theirs.num_classes == ways && flat.dim() == 1 &&
            flat.numel() == total && torch::isfinite(flat).all().item<bool>()) {
          models.push_back(flat.to(torch::kFloat32));
          ++shared;
          continue;
        }
        log::get("fusion")->warn(
            "event=shared_weights_unused expert={} spec=\"{}\" reason=\"the "
            "federation fuses '{}'\"",
            name, w->second.first, spec.to_string());
      }
      auto teacher = data.answers[i].to(torch::kFloat32);
      if (teacher.size(1) < ways) {
        teacher = torch::cat(
            {teacher, torch::zeros({teacher.size(0), ways - teacher.size(1)})},
            1);
      }
      auto imitator = o.imitator();
      imitator.seed(o.seed() + i)
          .init_seed(o.seed())
          .threads(o.threads())
          .stop(o.stop());
      auto result = distill(data.transfer, teacher, imitator, "imitator");
      models.push_back(flatten_model(*result.model.model));
    }
    auto fit = meta_learn(models, layers, o);
    const auto n = static_cast<std::int64_t>(models.size());
    init_ = dro_model(spec, fit,
                      shared == 0   ? "imitators"
                      : shared == n ? "weights"
                                    : "imitators+weights",
                      n, o);
    init_->attributes["shared_weights"] = std::to_string(shared);
    init_->attributes["labels"] = nlohmann::json(data.label_names).dump();
    init_->attributes["experts"] = fmt::format(
        "{}", fmt::join(data.experts | std::views::transform([](const auto& e) {
                          return e.name;
                        }),
                        ","));
    served_.reset();
    if (data.fusion_index.defined() && data.fusion_index.numel() > 0) {
      served_ = adapt_initialisation(*init_, data.fusion_inputs(),
                                     data.fusion_labels, data.num_classes,
                                     o.adapt_steps(), o.adapt_lr(), o.seed());
    }
  }
  torch::Tensor predict(QueryOracle&, const torch::Tensor& x) override {
    CHORUS_CHECK_CODE(init_.has_value(), Code::kFailedPrecondition,
                      "dro: predict before fit");
    CHORUS_CHECK_CODE(served_ != nullptr, Code::kFailedPrecondition,
                      "dro: the initialisation predicts only once adapted to "
                      "a task, and the round had no labelled fusion set V");
    return predict_proba(*served_, x);
  }
  std::optional<FusedModel> fused_model() const override { return init_; }

 private:
  AlgorithmOptions options_;
  std::optional<FusedModel> init_;
  std::shared_ptr<ClassifierImpl> served_;
};

// Applies the shared seed, thread count and stop token to every
// algorithm's options.
AlgorithmOptions seeded(AlgorithmOptions o) {
  o.foe().seed(o.seed()).threads(o.threads()).device(o.device()).stop(o.stop());
  o.distill()
      .seed(o.seed())
      .threads(o.threads())
      .device(o.device())
      .stop(o.stop());
  o.frugal()
      .fuser()
      .seed(o.seed())
      .threads(o.threads())
      .device(o.device())
      .stop(o.stop());
  o.tae().stop(o.stop());
  if (auto progress = o.on_progress()) {
    o.foe().on_epoch(
        [progress](const EpochReport& r) { progress("fuser", r); });
    o.distill().on_epoch(
        [progress](const EpochReport& r) { progress("student", r); });
  }
  o.dro().seed(o.seed()).threads(o.threads()).stop(o.stop());
  return o;
}

// Robust fusion around any algorithm: the experts judged on V
// (`judge_experts`) and left out answer uniformly in the fit, and are never
// asked at prediction.
class RobustFuser : public Fuser {
 public:
  RobustFuser(std::unique_ptr<Fuser> inner, double fraction)
      : inner_(std::move(inner)), fraction_(fraction) {}
  std::string name() const override { return inner_->name(); }
  bool needs_experts() const override { return inner_->needs_experts(); }
  void fit(const FusionData& data) override {
    data.validate(/*needs_labels=*/false);
    const bool labelled =
        data.fusion_index.defined() && data.fusion_index.numel() > 0;
    // Without V, the whole pool is judged against the consensus.
    verdicts_ = judge_experts(labelled ? data.fusion_answers() : data.answers,
                              data.experts, data.num_classes,
                              labelled ? data.fusion_labels : torch::Tensor(),
                              fraction_);
    left_out_.assign(verdicts_.size(), false);
    FusionData masked = data;
    for (std::size_t i = 0; i < verdicts_.size(); ++i) {
      if (verdicts_[i].trusted) continue;
      left_out_[i] = true;
      masked.answers[i] = uninformative_answer(data.answers[i].size(0),
                                               data.answers[i].size(1));
      masked.shared_weights.erase(data.experts[i].name);
      log::get("fusion")->warn("event=expert_left_out expert={} reason=\"{}\"",
                               verdicts_[i].name, verdicts_[i].reason);
    }
    inner_->fit(masked);
  }
  torch::Tensor predict(QueryOracle& oracle, const torch::Tensor& x) override {
    MaskedOracle masked(
        oracle, left_out_.empty()
                    ? std::vector<bool>(
                          static_cast<std::size_t>(oracle.num_experts()), false)
                    : left_out_);
    return inner_->predict(masked, x);
  }
  std::optional<FusedModel> fused_model() const override {
    auto fused = inner_->fused_model();
    if (fused) {
      std::vector<std::string> names;
      for (const auto& v : verdicts_)
        if (!v.trusted) names.push_back(v.name);
      fused->attributes["left_out"] = fmt::format("{}", fmt::join(names, ","));
    }
    return fused;
  }
  bool save(const std::filesystem::path& path) const override {
    if (dynamic_cast<const TaeFuser*>(inner_.get())) return inner_->save(path);
    return Fuser::save(path);
  }
  std::string spec() const override { return inner_->spec(); }
  Fuser& inner() { return *inner_; }
  const std::vector<ExpertTrust>& verdicts() const { return verdicts_; }

 private:
  std::unique_ptr<Fuser> inner_;
  double fraction_;
  std::vector<ExpertTrust> verdicts_;
  std::vector<bool> left_out_;
};

std::unique_ptr<Fuser> make_plain_fuser(const std::string& name,
                                        const AlgorithmOptions& o) {
  if (name == "bplus") return std::make_unique<EnsembleFuser>(false);
  if (name == "bmax") return std::make_unique<EnsembleFuser>(true);
  if (name == "distill") return std::make_unique<StudentFuser>(false, o);
  if (name == "foe-distill") return std::make_unique<StudentFuser>(true, o);
  if (name == "foe") return std::make_unique<FoeFuser>(o);
  if (name == "frugal") return std::make_unique<FrugalFuser>(o);
  if (name == "foe-select") return std::make_unique<SelectFuser>(o);
  if (name == "tae") return std::make_unique<TaeFuser>(o);
  if (name == "dro") return std::make_unique<DroFuser>(o);
  fail(Code::kInvalidArgument, "unknown algorithm '{}' (expected one of: {})",
       name, fmt::join(algorithm_names(), ", "));
}

}  // namespace

const std::vector<std::string>& algorithm_names() {
  static const std::vector<std::string> kNames = {
      "bplus",      "bmax",   "distill", "foe", "foe-distill",
      "foe-select", "frugal", "tae",     "dro"};
  return kNames;
}

std::unique_ptr<Fuser> make_fuser(const std::string& name,
                                  const AlgorithmOptions& options) {
  const auto o = seeded(options);
  auto fuser = make_plain_fuser(name, o);
  if (!o.robust()) return fuser;
  CHORUS_CHECK(o.robust_fraction() >= 0 && o.robust_fraction() <= 1,
               "robust fusion: the fraction {} is not in [0, 1]",
               o.robust_fraction());
  return std::make_unique<RobustFuser>(std::move(fuser), o.robust_fraction());
}

TaeModel* tae_model(Fuser& fuser) {
  if (auto* robust = dynamic_cast<RobustFuser*>(&fuser))
    return tae_model(robust->inner());
  auto* tae = dynamic_cast<TaeFuser*>(&fuser);
  return tae ? &tae->model() : nullptr;
}

FrugalFoe* frugal_model(Fuser& fuser) {
  auto* frugal = dynamic_cast<FrugalFuser*>(&fuser);
  return frugal ? &frugal->model() : nullptr;
}

std::vector<ExpertTrust> expert_verdicts(const Fuser& fuser) {
  auto* robust = dynamic_cast<const RobustFuser*>(&fuser);
  return robust ? robust->verdicts() : std::vector<ExpertTrust>{};
}

FusionResult run_fusion(Fuser& fuser, const FusionData& data,
                        QueryOracle& oracle, const torch::Tensor& test_inputs,
                        const torch::Tensor& test_labels) {
  using Clock = std::chrono::steady_clock;
  FusionResult result;
  result.algorithm = fuser.name();
  auto t0 = Clock::now();
  fuser.fit(data);
  auto t1 = Clock::now();
  oracle.reset_stats();
  auto probs = fuser.predict(oracle, test_inputs);
  auto t2 = Clock::now();
  const auto stats = oracle.total_stats();
  result.accuracy = accuracy(probs, test_labels);
  result.queries_per_input = static_cast<double>(stats.inputs) /
                             std::max<std::int64_t>(1, test_inputs.size(0));
  result.bytes_sent = stats.bytes_sent;
  result.bytes_received = stats.bytes_received;
  result.fit_seconds = std::chrono::duration<double>(t1 - t0).count();
  result.predict_seconds = std::chrono::duration<double>(t2 - t1).count();
  return result;
}

}  // namespace chorus::fusion
