#include "cluster.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>

#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <csignal>
#include <cstring>
#include <optional>

#include "chorus/coordinator/registry.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/device.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/local_data.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"
#include "chorus/protocol/shutdown.hpp"

extern char** environ;

namespace chorus::simulate {
namespace {

namespace fs = std::filesystem;

// Child processes (one per node with --processes), ended with the run.
class Children {
 public:
  void spawn(const std::vector<std::string>& argv, const fs::path& log) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = 0;
    const int rc =
        posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    CHORUS_CHECK_CODE(rc == 0, Code::kInternal, "cannot start {}: {}", argv[0],
                      std::strerror(rc));
    pids_.push_back(pid);
  }
  ~Children() {
    for (auto pid : pids_) kill(pid, SIGTERM);
    for (auto pid : pids_) waitpid(pid, nullptr, 0);
  }

 private:
  std::vector<pid_t> pids_;
};

}  // namespace

struct LocalCluster::Impl {
  LocalClusterOptions o;
  asio::io_context coordinator_io;
  std::unique_ptr<coordinator::NodeRegistry> registry;
  std::optional<protocol::IoThread> coordinator_thread;
  asio::io_context node_io;
  asio::thread_pool inference{1};
  std::vector<std::unique_ptr<node::NodeService>> services;
  std::vector<std::unique_ptr<node::NodeSession>> sessions;
  std::optional<Children> children;
  std::optional<protocol::IoThread> node_thread;
  bool stopped = false;

  void start_registry() {
    std::vector<std::string> roster;
    for (const auto& e : o.experts) roster.push_back(e.name);
    coordinator::RegistryOptions ro;
    ro.port = 0;
    ro.tls = protocol::TlsMaterial::load(
        o.pki / "ca.crt", o.pki / "coordinator.crt", o.pki / "coordinator.key");
    ro.task = o.task;
    // The coordinator's side of every request, to reconcile with the
    // nodes' audit logs (`chorus audit reconcile`).
    ro.request_log = o.out / "requests.jsonl";
    ro.request_log_signer = protocol::AuditSigner{
        .name = ro.name, .key_pem = ro.tls.key_pem, .seal_every = 100};
    registry = std::make_unique<coordinator::NodeRegistry>(
        coordinator_io, coordinator::Roster(roster), ro);
    registry->start();
    coordinator_thread.emplace(coordinator_io);
  }

  void start_children() {
    CHORUS_CHECK(!o.chorus_binary.empty(),
                 "--processes needs the chorus executable");
    children.emplace();
    const auto pki = fs::absolute(o.pki);
    for (const auto& e : o.experts) {
      const auto dir = fs::absolute(o.out / "nodes" / e.name);
      fs::create_directories(dir);
      write_file_atomic(
          dir / "node.toml",
          fmt::format(
              "# written by chorus simulate --processes\n"
              "[node]\nname = \"{0}\"\nstate_dir = \"{1}\"\nthreads = 1\n"
              "device = \"{6}\"\n"
              "[coordinator]\nhost = \"127.0.0.1\"\nport = {2}\n"
              "[tls]\nca = \"{3}/ca.crt\"\ncert = \"{3}/{0}.crt\"\n"
              "key = \"{3}/{0}.key\"\n"
              "[expert]\nkind = \"builtin\"\npath = \"{4}\"\n{5}",
              e.name, dir.string(), registry->port(), pki.string(),
              fs::absolute(e.file).string(),
              // Adaptation shots are drawn from Fashion-MNIST only.
              o.dataset == "fashion-mnist"
                  ? fmt::format("[adapt]\nshots_per_class = 5\nseed = {}\n",
                                o.seed)
                  : std::string(),
              o.device));
      children->spawn({o.chorus_binary.string(), "node", "--config",
                       (dir / "node.toml").string()},
                      dir / "node.log");
    }
  }

  void start_in_process() {
    const auto device = fusion::parse_device(o.device);
    for (std::size_t i = 0; i < o.experts.size(); ++i) {
      const auto& e = o.experts[i];
      node::ExpertOptions eo;
      eo.kind = node::ExpertKind::kBuiltin;
      eo.path = e.file;
      eo.device = device;
      node::NodeServiceOptions so;
      if (i < o.shots.size()) so.shots = o.shots[i];
      so.state_dir = o.out / "nodes" / e.name;
      so.audit_log = so.state_dir / "audit.jsonl";
      so.metadata = {{"name", e.name}, {"arch", e.arch}};
      node::SessionOptions s;
      s.host = "127.0.0.1";
      s.port = registry->port();
      s.tls = protocol::TlsMaterial::load(o.pki / "ca.crt",
                                          o.pki / (e.name + ".crt"),
                                          o.pki / (e.name + ".key"));
      // Sealed with the node's key, as a real node's log is.
      so.audit_signer = e.name;
      so.audit_key_pem = s.tls.key_pem;
      services.push_back(
          std::make_unique<node::NodeService>(node::load_expert(eo), so));
      sessions.push_back(std::make_unique<node::NodeSession>(
          node_io, inference, *services.back(), s));
      sessions.back()->start();
    }
  }

  void stop() {
    if (stopped) return;
    stopped = true;
    // Goodbye both ways; each loop ends once its connections have closed.
    if (registry) registry->stop("the simulation is over");
    for (auto& s : sessions) s->stop();
    constexpr std::chrono::milliseconds kGrace{3000};
    if (node_thread) node_thread->join_within(kGrace);
    if (coordinator_thread) coordinator_thread->join_within(kGrace);
    inference.join();
    children.reset();
  }
};

LocalCluster::LocalCluster(LocalClusterOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->o = std::move(options);
  try {
    impl_->start_registry();
    if (impl_->o.processes) {
      impl_->start_children();
    } else {
      impl_->start_in_process();
    }
    impl_->node_thread.emplace(impl_->node_io);
  } catch (...) {
    impl_->stop();
    throw;
  }
}

LocalCluster::~LocalCluster() { impl_->stop(); }

coordinator::NodeRegistry& LocalCluster::registry() { return *impl_->registry; }

void LocalCluster::stop() { impl_->stop(); }

}  // namespace chorus::simulate
