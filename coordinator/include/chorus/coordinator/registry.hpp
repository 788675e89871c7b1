#pragma once

#include <asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "chorus/coordinator/node_link.hpp"
#include "chorus/coordinator/roster.hpp"
#include "chorus/core/task.hpp"
#include "chorus/protocol/audit.hpp"
#include "chorus/protocol/channel.hpp"
#include "chorus/protocol/offload.hpp"

/// The coordinator's view of its nodes: who is connected, what each
/// announced in its Hello, and a way to send each of them requests. Runs the
/// mTLS server; no torch here.
namespace chorus::coordinator {

class StatusBoard;

/// A connected node.
struct NodeInfo {
  std::string identity;       ///< Its certificate CN.
  protocol::Hello announced;  ///< Its expert and query policy.
  int generation = 0;         ///< Connections so far (a reconnect adds one).
};

/// Options of the registry's server.
struct RegistryOptions {
  /// Addresses to listen on, all on `port` (IPv4 and IPv6; "::" listens
  /// on IPv6 only, beside "0.0.0.0").
  std::vector<std::string> listen_hosts{"127.0.0.1"};
  std::uint16_t port = 7700;  ///< 0: any free port (the same on all).
  protocol::TlsMaterial tls;
  protocol::ChannelOptions channel;
  /// The coordinator's name, sent in Welcome.
  std::string name = "coordinator";
  /// The federation's task, announced in Welcome: a node whose expert's
  /// input shape or labels do not fit it is refused (INVALID_ARGUMENT naming
  /// both sides' values). None admits any expert and announces no task.
  std::optional<TaskSpec> task;
  /// Identities (certificate CNs) admitted as operators: clients that say
  /// Hello with the capability "operator" and send PredictRequests to the
  /// coordinator (`chorus predict --coordinator`). Not nodes.
  std::vector<std::string> operators;
  /// Operator sessions open at once, at most (all operators together); one
  /// more is refused with RESOURCE_EXHAUSTED.
  std::size_t max_operator_sessions = 16;
  /// The coordinator's request log: every request sent to a node, one line
  /// each in the node audit log's format ("peer" naming the node), for
  /// `chorus audit reconcile`. Empty: none.
  std::filesystem::path request_log;
  /// Who seals the request log (the coordinator's name and key); none: the
  /// lines are hash-chained but not signed.
  std::optional<protocol::AuditSigner> request_log_signer;
};

/// The nodes a quorum needs: `min_nodes`, or with 0 the whole roster of
/// `roster` names (at least one).
std::size_t quorum_needed(std::size_t min_nodes, std::size_t roster);

/// What `NodeRegistry::reload` changed.
struct ReloadSummary {
  std::vector<std::string> nodes_added, nodes_removed;
  std::vector<std::string> operators_added, operators_removed;
  /// Serials the CRL revokes (all of them, not only connected ones).
  std::size_t revoked_serials = 0;
  /// Connections closed, each "identity (why)".
  std::vector<std::string> dropped;
  /// Members of the new roster whose certificate at their last join is
  /// revoked, connected or not, each "identity (serial S)": they rejoin only
  /// with a new certificate.
  std::vector<std::string> revoked_members;
};

/// Answers an operator's PredictRequest (blocking; called on the registry's
/// operator thread, one request at a time). Throws `chorus::Error`.
using OperatorHandler = std::function<protocol::PredictAnswer(
    const std::string& identity, const protocol::PredictCall& call)>;

/// Admits rostered nodes and keeps their connections. Thread-safe; the
/// server runs on `io`, which the caller runs on some thread.
class NodeRegistry {
 public:
  NodeRegistry(asio::io_context& io, Roster roster, RegistryOptions options);
  ~NodeRegistry();

  /// Starts listening.
  void start();
  /// Stops listening and says Goodbye to every node.
  void stop(const std::string& reason);
  /// The bound port.
  std::uint16_t port() const;

  /// The connected nodes, in roster order.
  std::vector<NodeInfo> connected() const;
  /// Why each node that tried to join was refused, by identity (the last
  /// refusal; cleared when it joins).
  std::map<std::string, std::string> refusals() const;
  /// Whether `identity` is connected now.
  bool is_connected(const std::string& identity) const;
  /// Waits until at least `min_nodes` are connected (0: every node of the
  /// roster as it is at each look, so that a SIGHUP that adds or removes a
  /// node moves the quorum with it), then up to `settle`
  /// more for the rest of the roster, for up to `timeout` in all, without
  /// blocking a thread: a coroutine on `executor()`, woken by every join
  /// and departure. Its error (a value: DEADLINE_EXCEEDED naming the nodes
  /// that are missing and why each that tried was refused; CANCELLED once
  /// `stop` was called or `cancel` requested) or the nodes present.
  asio::awaitable<protocol::Outcome<std::vector<NodeInfo>>> quorum(
      std::size_t min_nodes, std::chrono::milliseconds timeout,
      std::chrono::milliseconds settle, std::stop_token cancel);
  /// `quorum` for a thread that may block (never one of the io_context's):
  /// throws its error.
  std::vector<NodeInfo> wait_for_quorum(std::size_t min_nodes,
                                        std::chrono::milliseconds timeout,
                                        std::chrono::milliseconds settle = {},
                                        std::stop_token cancel = {});

  /// The node `identity`, whether connected now or not: each call goes
  /// over its connection of the moment (UNAVAILABLE when there is none).
  std::shared_ptr<NodeLink> link(const std::string& identity);
  /// The strand the rounds' coroutines run on (fan-outs over links).
  asio::any_io_executor executor() const;

  /// Starts answering operators' PredictRequests with `handler` (an empty
  /// handler stops: operators then get UNAVAILABLE).
  void serve_operators(OperatorHandler handler);
  /// Operators connected now.
  std::vector<std::string> operators_connected() const;

  /// Answers operators' StatusRequests from `board` (with the roster and
  /// the connections of the moment); without a board they get UNAVAILABLE.
  /// Nodes asking are refused (PERMISSION_DENIED).
  void serve_status(std::shared_ptr<const StatusBoard> board);

  /// The roster of the moment (a copy: `reload` may replace it).
  Roster roster() const;

  /// Replaces the roster, the operators and the TLS material (a new CRL, a
  /// renewed certificate) while running — what SIGHUP does. Nodes joined
  /// stay unless they left the roster; connections of certificates the new
  /// CRL revokes, of nodes no longer on the roster and of operators no
  /// longer listed are closed at once, each with its reason. Throws
  /// `chorus::Error` and changes nothing when the TLS material is unusable.
  ReloadSummary reload(Roster roster, std::vector<std::string> operators,
                       const protocol::TlsMaterial& tls);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::coordinator
