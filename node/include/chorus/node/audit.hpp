#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>

/// The node's audit log: one JSON line per request it received, appended and
/// flushed as it happens, so the data owner can see what was asked of the
/// expert, by whom, and what was answered. Each line carries the SHA-256 of
/// the line before it ("prev"; a hash chain), and every `seal_every` lines
/// and when the log is closed a "seal" line signs the chain's head with
/// the node's private key: an edited, deleted, inserted or reordered line
/// breaks the chain or a seal (`verify_audit`).
namespace chorus::node {

/// One request, as the audit log records it.
struct AuditRecord {
  std::string peer;  ///< The coordinator's identity (its CN).
  std::string kind;  ///< "predict", "model_push", "adapt".
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
  double latency_ms = 0;
};

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
  std::int64_t malformed_lines = 0;  ///< Lines that are not audit records.
  std::int64_t seals = 0;            ///< Seal lines (not requests).
};

/// Reads an audit log. Throws `chorus::Error` (NOT_FOUND).
AuditSummary summarise_audit(const std::filesystem::path& path);

}  // namespace chorus::node
