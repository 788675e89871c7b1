#include "chorus/protocol/audit.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "chorus/core/error.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/digest.hpp"

namespace chorus::protocol {
namespace {

std::string audit_time_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      now.time_since_epoch()) %
                  1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                     std::chrono::floor<std::chrono::seconds>(now), ms.count());
}

std::string line_hash(const std::string& text) { return to_hex(sha256(text)); }

// What a seal signs: the chain's head and the lines it covers.
std::string seal_message(const std::string& head, std::int64_t lines) {
  return fmt::format("chorus-audit-seal\n{}\n{}", head, lines);
}

}  // namespace

AuditRecord audit_record_of(const v1::Envelope& e, std::string peer) {
  AuditRecord r;
  r.peer = std::move(peer);
  r.kind = "other";
  r.request_id = e.request_id();
  if (e.has_predict_request()) {
    r.kind = "predict";
    r.round = e.predict_request().round();
    const auto& shape = e.predict_request().inputs().shape();
    r.inputs = shape.empty() ? 0 : shape[0];
  } else if (e.has_model_push()) {
    r.kind = "model_push";
    r.round = e.model_push().round();
  } else if (e.has_adapt_request()) {
    r.kind = "adapt";
    r.round = e.adapt_request().round();
  } else if (e.has_weights_request()) {
    r.kind = "weights";
    r.round = e.weights_request().round();
  }
  return r;
}

AuditLog::AuditLog(const std::filesystem::path& path,
                   std::optional<AuditSigner> signer)
    : path_(path), signer_(std::move(signer)), head_(kAuditGenesis) {
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
  }
  // The chain goes on from the lines already there: in a regular file only
  // (a device such as /dev/full would read without end).
  bool torn = false;
  std::error_code regular_ec;
  if (std::filesystem::is_regular_file(path, regular_ec)) {
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
  const auto signature =
      to_hex(sign_sha256(signer_->key_pem, seal_message(head_, lines_)));
  nlohmann::json line{{"time", audit_time_now()},
                      {"kind", "seal"},
                      {"prev", head_},
                      {"lines", lines_},
                      {"signer", signer_->name},
                      {"signature", signature}};
  write_line(line.dump());
  unsealed_ = 0;
}

void AuditLog::append(const AuditRecord& r) {
  nlohmann::json line{{"time", audit_time_now()}, {"peer", r.peer},
                      {"kind", r.kind},           {"request_id", r.request_id},
                      {"round", r.round},         {"inputs", r.inputs},
                      {"outcome", r.outcome},     {"latency_ms", r.latency_ms}};
  if (!r.message.empty()) line["message"] = r.message;
  line["budget_left"] =
      r.budget_left ? nlohmann::json(*r.budget_left) : nullptr;
  if (r.spent) line["spent"] = *r.spent;
  if (r.spent && !r.ledger) line["ledger"] = false;
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
  const auto who = inspect_certificate_pem(cert_pem).common_name;
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
            verify_sha256(cert_pem, seal_message(expected, lines),
                          from_hex(line.at("signature").get<std::string>()));
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
      if (line.contains("spent")) {
        s.spent = line.at("spent").get<std::int64_t>();
        s.ledger = line.value("ledger", true);
      }
    } catch (const std::exception&) {
      ++s.malformed_lines;  // A torn last line after a crash, or tampering.
    }
  }
  return s;
}

namespace {

// The requests of a log, and the signer of its seals.
struct ReadLog {
  std::vector<LoggedRequest> requests;
  std::string signer;
};

ReadLog read_requests(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path);
  if (!in) fail(Code::kNotFound, "{} '{}' does not exist", what, path.string());
  ReadLog out;
  std::string text;
  std::int64_t n = 0;
  while (std::getline(in, text)) {
    ++n;
    try {
      const auto line = nlohmann::json::parse(text);
      const auto kind = line.at("kind").get<std::string>();
      if (kind == "seal") {
        out.signer = line.value("signer", "");
        continue;
      }
      LoggedRequest r;
      r.line = n;
      r.time = line.at("time").get<std::string>();
      r.record.peer = line.at("peer").get<std::string>();
      r.record.kind = kind;
      r.record.request_id = line.at("request_id").get<std::uint64_t>();
      r.record.round = line.at("round").get<std::uint32_t>();
      r.record.inputs = line.at("inputs").get<std::int64_t>();
      r.record.outcome = line.at("outcome").get<std::string>();
      r.record.message = line.value("message", "");
      out.requests.push_back(std::move(r));
    } catch (const std::exception&) {
      // A torn last line, or one that is not a request: verify_audit is
      // the tool that judges a log's integrity.
    }
  }
  return out;
}

using RequestKey =
    std::tuple<std::string, std::uint64_t, std::uint32_t, std::int64_t>;

RequestKey key_of(const AuditRecord& r) {
  return {r.kind, r.request_id, r.round, r.inputs};
}

}  // namespace

Reconciliation reconcile_audit(const std::filesystem::path& node_log,
                               const std::filesystem::path& coordinator_log,
                               std::string node) {
  auto at_node = read_requests(node_log, "node audit log");
  auto at_coordinator =
      read_requests(coordinator_log, "coordinator request log");
  CHORUS_CHECK_CODE(
      node.empty() || at_node.signer.empty() || node == at_node.signer,
      Code::kInvalidArgument,
      "the node audit log '{}' is sealed by '{}', not '{}': "
      "reconcile it as '{}' (or leave --node out)",
      node_log.string(), at_node.signer, node, at_node.signer);
  if (node.empty()) node = at_node.signer;
  CHORUS_CHECK_CODE(!node.empty(), Code::kInvalidArgument,
                    "the node audit log '{}' has no seal naming its node: "
                    "say which node it is (--node NAME)",
                    node_log.string());
  Reconciliation out;
  out.node = node;
  // The node's requests, by key, in order; an "undelivered" line marks the
  // request it follows.
  std::map<RequestKey, std::deque<LoggedRequest>> pending;
  for (auto& r : at_node.requests) {
    if (out.coordinator.empty()) out.coordinator = r.record.peer;
    if (r.record.kind == "undelivered") {
      auto k = key_of(r.record);
      for (const auto* kind : {"predict", "model_push", "adapt", "weights"}) {
        std::get<0>(k) = kind;
        auto it = pending.find(k);
        if (it != pending.end() && !it->second.empty()) {
          it->second.back().undelivered = true;
          break;
        }
      }
      continue;
    }
    pending[key_of(r.record)].push_back(std::move(r));
  }
  auto failed = [](const LoggedRequest& r) {
    return r.record.outcome != "OK" || r.undelivered;
  };
  for (auto& c : at_coordinator.requests) {
    if (c.record.peer != node) continue;
    auto it = pending.find(key_of(c.record));
    if (it == pending.end() || it->second.empty()) {
      out.only_coordinator.push_back(std::move(c));
      continue;
    }
    auto n = std::move(it->second.front());
    it->second.pop_front();
    if (failed(n) == failed(c)) {
      ++out.matched;
    } else {
      out.disagree.emplace_back(std::move(n), std::move(c));
    }
  }
  for (auto& [key, left] : pending)
    for (auto& r : left) out.only_node.push_back(std::move(r));
  std::sort(out.only_node.begin(), out.only_node.end(),
            [](const auto& a, const auto& b) { return a.line < b.line; });
  return out;
}

}  // namespace chorus::protocol
