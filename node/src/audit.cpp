#include "chorus/node/audit.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"

namespace chorus::node {
namespace {

std::string utc_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      now.time_since_epoch()) %
                  1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                     std::chrono::floor<std::chrono::seconds>(now), ms.count());
}

}  // namespace

AuditLog::AuditLog(const std::filesystem::path& path) : path_(path) {
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
  }
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) {
    fail(errno == ENOENT ? Code::kNotFound : Code::kInternal,
         "cannot open audit log '{}': {}", path.string(), std::strerror(errno));
  }
}

AuditLog::~AuditLog() {
  if (file_) std::fclose(file_);
}

void AuditLog::append(const AuditRecord& r) {
  nlohmann::json line{{"time", utc_now()},    {"peer", r.peer},
                      {"kind", r.kind},       {"request_id", r.request_id},
                      {"round", r.round},     {"inputs", r.inputs},
                      {"outcome", r.outcome}, {"latency_ms", r.latency_ms}};
  if (!r.message.empty()) line["message"] = r.message;
  line["budget_left"] =
      r.budget_left ? nlohmann::json(*r.budget_left) : nullptr;
  if (r.spent) line["spent"] = *r.spent;
  const std::string text = line.dump() + "\n";
  std::lock_guard lock(mutex_);
  // One write per line: a concurrent reader sees whole lines.
  if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() ||
      std::fflush(file_) != 0) {
    fail(Code::kInternal, "cannot append to audit log '{}': {}", path_.string(),
         std::strerror(errno));
  }
}

AuditSummary summarise_audit(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in)
    fail(Code::kNotFound, "audit log '{}' does not exist", path.string());
  AuditSummary s;
  std::string text;
  while (std::getline(in, text)) {
    if (text.empty()) continue;
    nlohmann::json line;
    try {
      line = nlohmann::json::parse(text);
      const auto kind = line.at("kind").get<std::string>();
      const auto outcome = line.at("outcome").get<std::string>();
      const auto peer = line.at("peer").get<std::string>();
      const auto time = line.at("time").get<std::string>();
      const auto inputs = line.at("inputs").get<std::int64_t>();
      ++s.requests;
      ++s.by_kind[kind];
      ++s.by_outcome[outcome];
      ++s.by_peer[peer];
      if (kind == "predict" && outcome == "OK") s.inputs_answered += inputs;
      if (s.first_time.empty()) s.first_time = time;
      s.last_time = time;
      const auto& left = line.at("budget_left");
      s.budget_left = left.is_null() ? std::nullopt
                                     : std::optional(left.get<std::int64_t>());
      // Logs written before the field have no "spent".
      if (line.contains("spent"))
        s.spent = line.at("spent").get<std::int64_t>();
    } catch (const std::exception&) {
      ++s.malformed_lines;  // A torn last line after a crash, or tampering.
    }
  }
  return s;
}

}  // namespace chorus::node
