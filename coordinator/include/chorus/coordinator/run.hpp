#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "chorus/coordinator/algorithm_settings.hpp"
#include "chorus/core/config.hpp"
#include "chorus/core/task.hpp"
#include "chorus/fusion/formats.hpp"

namespace chorus::fusion {
struct AlgorithmOptions;
}

/// `chorus coordinator --config coordinator.toml`: what an operator runs.
namespace chorus::coordinator {

/// coordinator.toml, resolved.
struct CoordinatorConfig {
  /// [coordinator]
  std::string name = "coordinator";
  /// Addresses to listen on (IPv4 and IPv6, e.g. ["0.0.0.0", "::"]).
  std::vector<std::string> listen{"0.0.0.0"};
  std::uint16_t port = 7700;
  std::vector<std::string> roster;
  std::int64_t min_nodes = 0;  ///< 0: the whole roster.
  double quorum_timeout_s = 300;
  double settle_s = 5;
  double request_deadline_s = 120;
  std::int64_t query_batch = 512;
  /// MB of PredictRequests in flight across all nodes at once.
  std::int64_t max_inflight_mb = 64;
  std::int64_t rounds = 1;
  std::filesystem::path run_dir = "runs/coordinator";
  /// Identities admitted as operators (`chorus predict --coordinator`).
  std::vector<std::string> operators;
  /// After the rounds, keep serving fused predictions to operators until
  /// SIGINT/SIGTERM.
  bool serve = false;
  /// Connections accepted but not yet admitted (TLS handshake, Hello), at
  /// most; more are closed at once.
  std::int64_t max_unauthenticated = 64;
  /// Operator sessions open at once, at most.
  std::int64_t max_operator_sessions = 16;
  /// [metrics] listen: serve Prometheus metrics over HTTP at
  /// http://listen/metrics ("host:port"); empty: not served.
  std::string metrics_listen;
  /// [tls]; `crl` optional (empty: no revocation list is checked).
  std::filesystem::path ca, cert, key, crl;
  /// [fusion]
  std::string algorithm = "foe-distill";
  std::int64_t seed = 0;
  std::int64_t threads = 2;
  /// Where fusion trains ("cpu", "cuda", "cuda:N"; fusion/device.hpp).
  std::string device = "cpu";
  bool robust = false;           ///< fusion.robust
  double robust_fraction = 0.5;  ///< fusion.robust_fraction
  /// The distilled student's architecture (distill, foe-distill, and
  /// foe-select's selector): "auto" (from the task's input shape: LeNet for
  /// images, an MLP for features), "mlp", "lenet" or "resnet".
  std::string student = "auto";
  /// [fusion.foe], [fusion.distill], [fusion.frugal], [fusion.tae],
  /// [fusion.dro]: each algorithm's main knobs.
  AlgorithmSettings algorithms;
  /// [task]: what the federation is about (announced in Welcome). Defaults
  /// to the built-in data set's task; required (labels, input_shape) for
  /// `dataset = "files"`. Normalisation statistics left out are computed
  /// from the transfer pool.
  TaskSpec task = fashion_mnist_task();
  /// [data]: where the public data comes from.
  /// A built-in source (`fusion::builtin_sources()`): the transfer pool is
  /// drawn from its training split as protocol P1 draws it (the labels of
  /// the first `fusion_labels` form V) and the test split is the test set.
  /// "files": U from `transfer`, the labelled fusion set V from `fusion`
  /// (optional), the test set from `test` (optional), each a file or folder
  /// in the formats `fusion::read_examples` reads.
  std::string dataset = "fashion-mnist";
  std::filesystem::path data_dir;
  std::int64_t transfer_size = 10'000;  ///< 0: all of `transfer`.
  std::int64_t fusion_labels = 500;
  std::int64_t pool_seed = 0;
  fusion::DataRef transfer, fusion, test;
  /// Evaluate the fused model on the test split when it needs no expert.
  bool evaluate = true;
};

/// Reads every key (defaults for absent ones), then refuses unknown keys.
CoordinatorConfig read_coordinator_config(Config& config);

/// [fusion]'s settings as the fusion algorithms take them (seed, threads,
/// device, robustness, the student, and the [fusion.<algorithm>] tables).
fusion::AlgorithmOptions algorithm_options(const CoordinatorConfig& config);

/// The resolved config as TOML (`--print-config`, and `config.toml` in the
/// run directory).
std::string to_toml(const CoordinatorConfig& config);

/// Reads the configuration again (SIGHUP): the file and the command line's
/// overrides, as at start. Throws `chorus::Error`.
using ConfigReader = std::function<CoordinatorConfig()>;

/// Runs the coordinator until its rounds are done (or SIGINT/SIGTERM).
/// On SIGHUP, `reread` (when given) reads the configuration again, and the
/// roster, the operators and the TLS files (CRL included) take effect
/// without a restart. Returns the process exit status.
int run_coordinator(const CoordinatorConfig& config, bool resume,
                    ConfigReader reread = {});

}  // namespace chorus::coordinator
