#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "chorus/core/config.hpp"

namespace chorus::fusion {
struct AlgorithmOptions;
}

/// The `[fusion.<algorithm>]` tables of the coordinator's config, which
/// `chorus simulate --<algorithm> KEY=VALUE` takes too: each fusion
/// algorithm's main knobs. The defaults are those of its `fusion::` options
/// (kept free of torch headers here; the coordinator test checks that they
/// stay equal).
namespace chorus::coordinator {

struct AlgorithmSettings {
  /// [fusion.foe]: the FoE fuser (`fusion::FoeOptions`), wherever one is
  /// trained: foe, foe-distill, foe-select, and frugal's fusers.
  struct Foe {
    std::int64_t epochs = 50;
    std::vector<std::int64_t> hidden{512, 512};
    double lr = 1e-3;
    std::int64_t batch_size = 128;
    double weight_decay = 1e-4;
    std::string features = "logprobs";  ///< "logprobs" or "probs" (paper)
    std::int64_t self_training_rounds = 0;
    double pseudo_label_confidence = 0.9;
  } foe;
  /// [fusion.distill]: the distilled student (`fusion::DistillOptions`) of
  /// distill, foe-distill and foe-select; its architecture is
  /// fusion.student.
  struct Distill {
    std::int64_t epochs = 10;
    double lr = 1e-3;
    std::int64_t batch_size = 128;
    double temperature = 1.0;
    double holdout = 0.1;
    std::int64_t patience = 4;
  } distill;
  /// [fusion.frugal]: which experts frugal asks (`fusion::FrugalOptions`).
  struct Frugal {
    std::int64_t neighbours = 10;
    std::int64_t knn_k = 9;
    double lambda = 0.02;
    bool estimate_on_transfer = true;
    /// The cost of asking each node, by identity; a node not named costs 1.
    std::map<std::string, double> costs;
  } frugal;
  /// [fusion.tae]: tae's main knobs (`fusion::TaeOptions`). The
  /// adaptation's (`readout`, `head_steps`, `covariance_shrinkage`) are
  /// saved with the model, so the nodes adapt with them too.
  struct Tae {
    std::int64_t epochs = 20;           ///< training.epochs
    std::int64_t conv_channels = 8;     ///< network.conv_channels (0: none)
    std::int64_t pool_centres = 200;    ///< training.pool_centres (0: none)
    std::int64_t encoder_shift = 0;     ///< training.encoder_shift (0: none)
    double answer_weight = 1000.0;      ///< training.answer_weight
    std::string readout = "auto";       ///< adaptation.readout
    std::int64_t head_steps = 100;      ///< adaptation.head_steps
    double covariance_shrinkage = 0.3;  ///< adaptation.covariance_shrinkage
  } tae;
  /// [fusion.dro]: dro's meta-learning (`fusion::DroOptions`).
  struct Dro {
    std::int64_t meta_steps = 600;
    double meta_lr = 0.03;
    std::int64_t inner_steps = 1;
    double inner_lr = 0.03;
    std::vector<double> gammas{10, 2, 0.5};
    std::int64_t embedding_dim = 50;
    bool online = false;
    std::int64_t online_steps = 8;
    std::int64_t adapt_steps = 25;
    double adapt_lr = 0.03;
  } dro;
};

/// The algorithms with a table, in the order `to_toml` writes them.
const std::vector<std::string>& settings_tables();

/// Every [fusion.<algorithm>] table (defaults for absent keys); a bad value
/// throws `chorus::Error` (INVALID_ARGUMENT) naming its key (and the file,
/// when `config` has one).
AlgorithmSettings read_algorithm_settings(Config& config);

/// Sets the algorithms' options from them.
void apply_algorithm_settings(const AlgorithmSettings& settings,
                              fusion::AlgorithmOptions& options);

/// One table as TOML ("[fusion.foe]\nepochs = 50\n…"); `table` is one of
/// `settings_tables()`.
std::string settings_toml(const AlgorithmSettings& settings,
                          const std::string& table);

/// One table on one line, as `chorus simulate` prints it ("tae: epochs 20,
/// conv_channels 8, …").
std::string settings_line(const AlgorithmSettings& settings,
                          const std::string& table);

/// The tables an algorithm's fit reads ("foe-distill": foe and distill).
std::vector<std::string> tables_of(const std::string& algorithm);

}  // namespace chorus::coordinator
