#pragma once

#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "chorus/fusion/distill.hpp"
#include "chorus/fusion/dro.hpp"
#include "chorus/fusion/foe.hpp"
#include "chorus/fusion/frugal.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/oracle.hpp"
#include "chorus/fusion/robust.hpp"
#include "chorus/fusion/tae.hpp"

/// The fusion algorithms behind one interface, by name: what the coordinator
/// runs each round and `chorus simulate --algorithm NAME` selects.
namespace chorus::fusion {

/// What a round collected: the experts' answers on the transfer pool U and
/// the labelled fusion set V (a subset of U).
struct FusionData {
  /// C, the size of the shared label space.
  std::int64_t num_classes = 0;
  /// The names of the C labels, when known.
  std::vector<std::string> label_names;
  /// The experts, in the order of `answers`.
  std::vector<ExpertInfo> experts;
  /// U's inputs [N, ...].
  torch::Tensor transfer;
  /// Every expert's answers on U, in the oracle's expert order.
  std::vector<torch::Tensor> answers;
  /// Rows of U that form V (int64), and their labels (int64).
  torch::Tensor fusion_index;
  torch::Tensor fusion_labels;
  /// Experts' own weights, shared by nodes that opted in (dro uses them in
  /// place of an imitator): expert name → its ModelSpec string and its
  /// flattened parameters (`flatten_model`'s order).
  std::map<std::string, std::pair<std::string, torch::Tensor>> shared_weights;

  /// The answers restricted to V's rows.
  std::vector<torch::Tensor> fusion_answers() const;
  /// V's inputs.
  torch::Tensor fusion_inputs() const;
  /// The answers on U lifted into the shared label space.
  std::vector<torch::Tensor> lifted_answers() const;
  /// Throws `chorus::Error` (INVALID_ARGUMENT) when the parts disagree, or
  /// when `needs_labels` and V is empty.
  void validate(bool needs_labels) const;
};

/// Options of every algorithm, by algorithm.
struct AlgorithmOptions {
  TORCH_ARG(FoeOptions, foe) = FoeOptions().features(FoeFeatures::kLogProbs);
  TORCH_ARG(DistillOptions, distill) = DistillOptions();
  TORCH_ARG(FrugalOptions, frugal) = FrugalOptions();
  TORCH_ARG(TaeOptions, tae) = TaeOptions();
  TORCH_ARG(DroOptions, dro) = DroOptions();
  TORCH_ARG(std::uint64_t, seed) = 0;
  TORCH_ARG(int, threads) = 0;
  /// Robust fusion: experts whose answers on V disagree with V's labels (or
  /// the other experts) are left out of the fit and never asked at
  /// prediction (`judge_experts`).
  TORCH_ARG(bool, robust) = false;
  /// How close to the experts' median agreement an expert must come, from
  /// chance (0) to the median itself (1).
  TORCH_ARG(double, robust_fraction) = 0.5;
  /// Where the trained fusers and students train: foe, foe-distill,
  /// distill, foe-select and frugal's fuser (tae and dro train on the CPU).
  TORCH_ARG(c10::Device, device) = c10::Device(c10::kCPU);
  /// Cancels fitting: every algorithm's training throws `chorus::Error`
  /// (CANCELLED) at its next batch once a stop is requested.
  TORCH_ARG(std::stop_token, stop) = {};
  /// Progress of the fit: called after each epoch of the FoE fuser's
  /// training ("fuser") and of a student's ("student"; distill,
  /// foe-distill). Frugal's many subset fusers report nothing.
  TORCH_ARG(
      std::function<void(const std::string& stage, const EpochReport& epoch)>,
      on_progress) = nullptr;
};

/// A fusion algorithm: fitted on a round's answers, then predicting, perhaps
/// by querying experts.
class Fuser {
 public:
  virtual ~Fuser() = default;
  /// The algorithm's name, e.g. "foe".
  virtual std::string name() const = 0;
  /// Whether prediction queries the experts (ensembles, foe, frugal).
  virtual bool needs_experts() const = 0;
  /// Learns from the collected answers.
  virtual void fit(const FusionData& data) = 0;
  /// Fused probabilities [N, C] for `inputs`; queries `oracle` only when
  /// `needs_experts()`.
  virtual torch::Tensor predict(QueryOracle& oracle,
                                const torch::Tensor& inputs) = 0;
  /// The storable fused model; empty for the ensembles, which have none.
  virtual std::optional<FusedModel> fused_model() const = 0;
  /// Writes the model to broadcast to `path` atomically: `fused_model()` by
  /// default, tae's global model for tae. False when there is none.
  virtual bool save(const std::filesystem::path& path) const;
  /// What a ModelPush announces as the saved model's spec.
  virtual std::string spec() const;
};

/// The names `make_fuser` accepts: bplus, bmax (ensembles); distill (a
/// student of B+); foe (the FoE fuser); foe-distill (a student of FoE, no
/// expert at prediction time); foe-select (FoE's selection form: a
/// classifier over experts on the input, only the chosen expert answers);
/// frugal (cost-aware sequential FoE); tae (task-agnostic prototypes: the
/// global model is broadcast, nodes adapt it to their tasks); dro (a
/// meta-learned initialisation from imitators of the experts, broadcast for
/// nodes to adapt to their tasks).
const std::vector<std::string>& algorithm_names();

/// A fuser for `name`, robust when `options.robust()`. Throws
/// `chorus::Error` (INVALID_ARGUMENT) naming the accepted names.
std::unique_ptr<Fuser> make_fuser(const std::string& name,
                                  const AlgorithmOptions& options = {});

/// The global model of a fitted "tae" fuser (null for other algorithms).
TaeModel* tae_model(Fuser& fuser);

/// The cost-aware FoE of a fitted "frugal" fuser, to predict at another λ
/// (null for other algorithms, and for a robust one: its predictions must
/// go through the verdicts).
FrugalFoe* frugal_model(Fuser& fuser);

/// The verdicts on the experts of a fitted robust fuser (empty when the
/// fuser is not robust).
std::vector<ExpertTrust> expert_verdicts(const Fuser& fuser);

/// The uniform result of an algorithm on a test set.
struct FusionResult {
  std::string algorithm;
  double accuracy = 0;
  /// Expert queries (inputs) at prediction time, per test input.
  double queries_per_input = 0;
  /// Bytes to and from the experts at prediction time.
  std::int64_t bytes_sent = 0;
  std::int64_t bytes_received = 0;
  double fit_seconds = 0;
  double predict_seconds = 0;
};

/// Fits `fuser` on `data`, predicts `test_inputs` through `oracle`, and
/// measures it against `test_labels`. The oracle's counters are reset.
FusionResult run_fusion(Fuser& fuser, const FusionData& data,
                        QueryOracle& oracle, const torch::Tensor& test_inputs,
                        const torch::Tensor& test_labels);

}  // namespace chorus::fusion
