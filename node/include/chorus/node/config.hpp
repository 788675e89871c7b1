#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "chorus/core/config.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/local_data.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"

/// node.toml: everything a data owner sets about the node, with defaults.
/// Relative paths are relative to the config file. See examples/.
namespace chorus::node {

/// A node's resolved configuration.
struct NodeConfig {
  /// [node] name: shown in logs; the identity the coordinator sees is the
  /// certificate's CN.
  std::string name = "node";
  /// [node] state_dir: pushed models and, by default, the audit log.
  std::filesystem::path state_dir = "state";
  /// [node] threads: torch intra-op threads for inference (and training).
  int threads = 1;
  /// [node] workers: inference worker threads.
  int workers = 1;
  /// [node] device: where the expert answers and `node train` trains
  /// ("cpu", "cuda", "cuda:N"; see fusion/device.hpp).
  std::string device = "cpu";
  /// [coordinator] host, port; [tls] ca, cert, key.
  std::string host = "localhost";
  std::uint16_t port = 7700;
  /// [coordinator] server_name: the name the coordinator's certificate is
  /// checked against (empty: `host`).
  std::string server_name;
  /// [coordinator] retry_max_s: the longest wait between reconnects (the
  /// waits grow from 0.2 s, with jitter); refused_retry_s: the wait after
  /// the coordinator refused this node (not on its roster, another
  /// protocol, a task its expert does not fit), said once.
  double retry_max_s = 10;
  double refused_retry_s = 60;
  std::filesystem::path ca, cert, key;
  /// [expert] ...
  ExpertOptions expert;
  /// [policy] ...
  QueryPolicy policy;
  /// [audit] log (default: <state_dir>/audit.jsonl).
  std::filesystem::path audit_log;
  /// [audit] seal_every: lines between two seals of the log's hash chain
  /// (signed with the node's key; one more at shutdown).
  std::int64_t audit_seal_every = 100;
  /// [metrics] listen: serve Prometheus metrics over HTTP at
  /// http://listen/metrics ("host:port"); empty: not served.
  std::string metrics_listen;
  /// [adapt] shots_per_class: private labelled examples per class of the
  /// node's task, drawn from its local data ([train]), for adapting a pushed
  /// tae model (0: the node does not adapt); [adapt] seed.
  std::int64_t adapt_shots_per_class = 0;
  std::uint64_t adapt_seed = 0;
  /// [train] ... (for `chorus node train`): the architecture and recipe,
  /// and the local data (train.dataset: a built-in source or "files" with
  /// train.data, train.label_file, train.label_column; the [task] table
  /// it is read against).
  TrainExpertOptions train;
};

/// Reads every node key from `config` (defaults for absent ones) and then
/// refuses unknown keys. Throws `chorus::Error` (INVALID_ARGUMENT) naming the
/// key at fault.
NodeConfig read_node_config(Config& config);

/// The config as TOML, every key resolved (for `--print-config`).
std::string to_toml(const NodeConfig& config);

}  // namespace chorus::node
