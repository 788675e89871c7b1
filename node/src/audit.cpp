#include "chorus/node/audit.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/digest.hpp"

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

std::string line_hash(const std::string& text) {
  return protocol::to_hex(protocol::sha256(text));
}

// What a seal signs: the chain's head and the lines it covers.
std::string seal_message(const std::string& head, std::int64_t lines) {
  return fmt::format("chorus-audit-seal\n{}\n{}", head, lines);
}

}  // namespace

AuditLog::AuditLog(const std::filesystem::path& path,
                   std::optional<AuditSigner> signer)
    : path_(path), signer_(std::move(signer)), head_(kAuditGenesis) {
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
  }
  // The chain goes on from the lines already there.
  bool torn = false;
  {
    std::ifstream in(path, std::ios::binary);
    std::string text;
    while (std::getline(in, text)) {
      head_ = line_hash(text);
      ++lines_;
      ++unsealed_;
      if (text.find("\"kind\":\"seal\"") != std::string::npos) unsealed_ = 0;
      torn = in.eof();  // The last line had no newline.
    }
  }
  file_ = std::fopen(path.c_str(), "a");
  if (!file_) {
    fail(errno == ENOENT ? Code::kNotFound : Code::kInternal,
         "cannot open audit log '{}': {}", path.string(), std::strerror(errno));
  }
  if (torn && (std::fputc('\n', file_) == EOF || std::fflush(file_) != 0)) {
    fail(Code::kInternal, "cannot append to audit log '{}': {}", path_.string(),
         std::strerror(errno));
  }
}

AuditLog::~AuditLog() {
  if (!file_) return;
  try {
    std::lock_guard lock(mutex_);
    if (signer_ && unsealed_ > 0) seal();
  } catch (const std::exception&) {
    // The unsealed tail stays verifiable by its chain.
  }
  std::fclose(file_);
}

void AuditLog::write_line(const std::string& text) {
  const std::string out = text + "\n";
  // One write per line: a concurrent reader sees whole lines.
  if (std::fwrite(out.data(), 1, out.size(), file_) != out.size() ||
      std::fflush(file_) != 0) {
    fail(Code::kInternal, "cannot append to audit log '{}': {}", path_.string(),
         std::strerror(errno));
  }
  head_ = line_hash(text);
  ++lines_;
}

void AuditLog::seal() {
  const auto signature = protocol::to_hex(
      protocol::sign_sha256(signer_->key_pem, seal_message(head_, lines_)));
  nlohmann::json line{{"time", utc_now()},       {"kind", "seal"},
                      {"prev", head_},           {"lines", lines_},
                      {"signer", signer_->name}, {"signature", signature}};
  write_line(line.dump());
  unsealed_ = 0;
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
  if (r.epsilon_spent) line["epsilon_spent"] = *r.epsilon_spent;
  std::lock_guard lock(mutex_);
  line["prev"] = head_;
  write_line(line.dump());
  ++unsealed_;
  if (signer_ && unsealed_ >= signer_->seal_every) seal();
}

AuditVerification verify_audit(const std::filesystem::path& path,
                               const std::string& cert_pem) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail(Code::kNotFound, "audit log '{}' does not exist", path.string());
  const auto who = protocol::inspect_certificate_pem(cert_pem).common_name;
  AuditVerification v;
  std::string expected = kAuditGenesis;
  std::string text;
  auto bad = [&](std::int64_t line, std::string why) {
    v.first_bad_line = line;
    v.problem = std::move(why);
    return v;
  };
  while (std::getline(in, text)) {
    const std::int64_t i = ++v.lines;
    nlohmann::json line;
    try {
      line = nlohmann::json::parse(text);
    } catch (const std::exception&) {
      return bad(i,
                 "it is not a JSON record (a torn line after a crash, or "
                 "an edit)");
    }
    if (!line.is_object() || !line.contains("prev") ||
        !line["prev"].is_string()) {
      return bad(i,
                 "it carries no hash of the line before it (written "
                 "before audit logs were chained, or edited)");
    }
    if (line["prev"].get<std::string>() != expected) {
      if (i == 1)
        return bad(1,
                   "it does not start the chain (lines before it "
                   "were deleted)");
      return bad(i - 1,
                 fmt::format("line {} does not follow it: line {} was edited, "
                             "or lines were deleted, inserted or reordered "
                             "there",
                             i, i - 1));
    }
    if (line.value("kind", "") == "seal") {
      bool signed_ok = false;
      try {
        const auto lines = line.at("lines").get<std::int64_t>();
        signed_ok =
            lines == i - 1 &&
            protocol::verify_sha256(
                cert_pem, seal_message(expected, lines),
                protocol::from_hex(line.at("signature").get<std::string>()));
      } catch (const std::exception&) {
        signed_ok = false;
      }
      if (!signed_ok) {
        return bad(
            i, fmt::format("the seal does not verify with '{}''s certificate: "
                           "the lines before it were rewritten, or someone "
                           "else sealed them",
                           who));
      }
      ++v.seals;
      v.last_sealed_line = i;
      v.signer = line.value("signer", "");
    }
    expected = line_hash(text);
  }
  v.intact = true;
  return v;
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
      if (kind == "seal") {
        ++s.seals;
        continue;
      }
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
