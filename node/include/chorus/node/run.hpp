#pragma once

#include "chorus/node/config.hpp"

namespace chorus::node {

/// Runs a node until SIGINT/SIGTERM: loads the expert, dials the
/// coordinator, answers within the policy, reconnects with backoff. Throws
/// `chorus::Error` for what prevents it from starting (missing expert or
/// certificates, bad config).
void run_node(const NodeConfig& config);

/// Sets torch's intra-op threads for this process.
void set_torch_threads(int threads);

}  // namespace chorus::node
