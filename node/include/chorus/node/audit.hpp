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
/// expert, by whom, and what was answered.
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
  /// Inputs charged to the budget since the ledger began, after it: the
  /// same count as state_dir/budget.json's spent_total.
  std::optional<std::int64_t> spent;
  double latency_ms = 0;
};

/// An append-only JSONL file. Thread-safe.
class AuditLog {
 public:
  /// Opens (creates) `path` for appending. Throws `chorus::Error`.
  explicit AuditLog(const std::filesystem::path& path);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  /// Appends one line with the current UTC time and flushes it.
  void append(const AuditRecord& record);
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::mutex mutex_;
  std::FILE* file_ = nullptr;
};

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
};

/// Reads an audit log. Throws `chorus::Error` (NOT_FOUND).
AuditSummary summarise_audit(const std::filesystem::path& path);

}  // namespace chorus::node
