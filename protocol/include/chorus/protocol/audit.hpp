#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace chorus::v1 {
class Envelope;  // The generated message; codec.hpp brings its definition.
}  // namespace chorus::v1

/// The request logs both sides keep. A node's audit log: one JSON line per
/// request it received, appended and flushed as it happens, so the data
/// owner can see what was asked of the expert, by whom, and what was
/// answered. The coordinator's request log (run_dir/requests.jsonl): the
/// same lines for every request it sent, "peer" naming the node;
/// `reconcile_audit` lists what one side has and the other lacks. Each line
/// carries the SHA-256 of the line before it ("prev"; a hash chain), and every
/// `seal_every` lines and when the log is closed a "seal" line signs the
/// chain's head with the node's private key: an edited, deleted, inserted or
/// reordered line breaks the chain or a seal (`verify_audit`).
namespace chorus::protocol {

/// One request, as the audit log records it.
struct AuditRecord {
  /// The other side's identity (its CN): the coordinator in a node's log,
  /// the node in the coordinator's.
  std::string peer;
  /// "predict", "model_push", "adapt", "weights" or "other"; in a node's
  /// log also "undelivered" (a reply that found its connection closed).
  std::string kind;
  std::uint64_t request_id = 0;
  std::uint32_t round = 0;
  std::int64_t inputs = 0;     ///< Inputs in the request (predict).
  std::string outcome = "OK";  ///< A status code name.
  std::string message;         ///< The error message, if any.
  std::optional<std::int64_t> budget_left;  ///< Total budget left after it.
  /// ε spent by the node's answers after it ([policy.privacy] only).
  std::optional<double> epsilon_spent;
  /// Inputs charged to the budget since the ledger began, after it: the
  /// same count as state_dir/budget.json's spent_total.
  std::optional<std::int64_t> spent;
  /// False for a node without budgets: it keeps no ledger, and `spent`
  /// counts from the node's start (written as "ledger": false).
  bool ledger = true;
  double latency_ms = 0;
};

/// The record of `request` from `peer` as far as the envelope says (kind, id,
/// round, inputs), read before it is decoded, so that a request refused as
/// malformed is recorded too.
AuditRecord audit_record_of(const v1::Envelope& request, std::string peer);

/// Who seals an audit log: the node's name and its private key (PEM).
struct AuditSigner {
  std::string name;
  std::string key_pem;
  /// A seal after this many lines (and one when the log is closed).
  std::int64_t seal_every = 100;
};

/// An append-only JSONL file. Thread-safe.
class AuditLog {
 public:
  /// Opens (creates) `path` for appending, continuing the hash chain of the
  /// lines already there (a torn last line is ended first). With a signer,
  /// lines are sealed. Throws `chorus::Error`.
  explicit AuditLog(const std::filesystem::path& path,
                    std::optional<AuditSigner> signer = std::nullopt);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  /// Appends one line with the current UTC time and flushes it.
  void append(const AuditRecord& record);
  const std::filesystem::path& path() const { return path_; }

 private:
  // Writes `text` (one line, no newline) and moves the chain on; mutex_
  // held.
  void write_line(const std::string& text);
  void seal();  // mutex_ held.

  std::filesystem::path path_;
  std::optional<AuditSigner> signer_;
  std::mutex mutex_;
  std::FILE* file_ = nullptr;
  std::string head_;           // Hex SHA-256 of the last line.
  std::int64_t lines_ = 0;     // Lines in the file.
  std::int64_t unsealed_ = 0;  // Lines since the last seal.
};

/// The hash chain's value before the first line: 64 zeros.
inline constexpr const char* kAuditGenesis =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// What `verify_audit` found.
struct AuditVerification {
  bool intact = false;
  std::int64_t lines = 0;
  std::int64_t seals = 0;
  std::int64_t last_sealed_line = 0;  ///< The last seal's line (0: none).
  std::string signer;                 ///< The name in the seals.
  /// The first line at fault (1-based; 0 when intact) and why.
  std::int64_t first_bad_line = 0;
  std::string problem;
};

/// Checks an audit log's hash chain and its seals' signatures with the
/// node's certificate (PEM). Lines after the last seal are intact as far
/// as the chain goes, but only a seal proves that nobody rewrote them.
/// Throws `chorus::Error` (NOT_FOUND).
AuditVerification verify_audit(const std::filesystem::path& path,
                               const std::string& cert_pem);

/// What `chorus node audit` prints.
struct AuditSummary {
  std::int64_t requests = 0;
  std::int64_t inputs_answered = 0;  ///< Inputs of successful predicts.
  std::map<std::string, std::int64_t> by_kind;
  std::map<std::string, std::int64_t> by_outcome;
  std::map<std::string, std::int64_t> by_peer;
  std::string first_time, last_time;
  std::optional<std::int64_t> budget_left;  ///< As of the last record.
  /// Inputs charged to the budget, as of the last record that says
  /// (answered, and also those whose answer was withheld or undelivered).
  std::optional<std::int64_t> spent;
  /// Whether that count is a kept ledger's (false: the node has no budget,
  /// and counts from its last start).
  bool ledger = true;
  std::int64_t malformed_lines = 0;  ///< Lines that are not audit records.
  std::int64_t seals = 0;            ///< Seal lines (not requests).
};

/// Reads an audit log. Throws `chorus::Error` (NOT_FOUND).
AuditSummary summarise_audit(const std::filesystem::path& path);

/// A request as `reconcile_audit` read it from one log.
struct LoggedRequest {
  std::int64_t line = 0;  ///< 1-based, in its log.
  std::string time;
  AuditRecord record;
  /// The node's log says the answer never left (an "undelivered" line).
  bool undelivered = false;
};

/// What a node's audit log and the coordinator's request log say of the
/// requests between them.
struct Reconciliation {
  std::string node;          ///< The node's identity.
  std::string coordinator;   ///< The coordinator's (from the node's log).
  std::int64_t matched = 0;  ///< Requests both logs hold, outcomes agreeing.
  /// In the node's log only: a request the coordinator does not say it
  /// sent (another coordinator's, or lines missing from its log).
  std::vector<LoggedRequest> only_node;
  /// In the coordinator's log only: a request the node does not say it
  /// received (lines missing from the node's log).
  std::vector<LoggedRequest> only_coordinator;
  /// In both, with outcomes that disagree (e.g. the node answered, the
  /// coordinator gave up at its deadline): node's, coordinator's.
  std::vector<std::pair<LoggedRequest, LoggedRequest>> disagree;
  bool agrees() const {
    return only_node.empty() && only_coordinator.empty() && disagree.empty();
  }
};

/// Matches the requests of a node's audit log with those of the
/// coordinator's request log addressed to `node` (empty: the signer of the
/// node log's seals) by kind, request id, round and inputs, in the order
/// they were written (request ids restart with each connection). Seals and
/// a torn line are skipped. Throws `chorus::Error` (NOT_FOUND;
/// INVALID_ARGUMENT when the node's name is neither given nor in a seal, or
/// differs from the seals' signer).
Reconciliation reconcile_audit(const std::filesystem::path& node_log,
                               const std::filesystem::path& coordinator_log,
                               std::string node = "");

}  // namespace chorus::protocol
