#pragma once
// A federation on one machine: a coordinator's registry on its own thread
// and one node per expert — in this process (sessions on one loop sharing
// one inference thread) or one `chorus node` child process each. The
// cluster owns the threads and the children; stop() (or the destructor)
// says goodbye both ways and ends them within a grace period. Private to
// simulate/src.

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "chorus/core/task.hpp"
#include "experts.hpp"

namespace chorus::coordinator {
class NodeRegistry;
}
namespace chorus::node {
struct LabelledShots;
}

namespace chorus::simulate {

struct LocalClusterOptions {
  TaskSpec task;
  std::vector<SimExpert> experts;
  /// Each in-process node's private labelled shots (null: none); child
  /// processes draw their own.
  std::vector<std::shared_ptr<const node::LabelledShots>> shots;
  std::filesystem::path pki;  ///< ca.crt, coordinator.*, <node>.*
  std::filesystem::path out;  ///< The run directory (nodes/<name>/ in it).
  bool processes = false;
  std::filesystem::path chorus_binary;  ///< With processes.
  std::string dataset;                  ///< Children draw shots from it.
  std::uint64_t seed = 0;
  std::string device = "cpu";  ///< Where the nodes' experts answer.
};

class LocalCluster {
 public:
  /// Starts the registry (an ephemeral loopback port) and every node.
  explicit LocalCluster(LocalClusterOptions options);
  /// stop().
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  coordinator::NodeRegistry& registry();

  /// Goodbye both ways; each loop ends once its connections have closed (or
  /// after a grace period of 3 s); children get SIGTERM and are reaped.
  /// Idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::simulate
