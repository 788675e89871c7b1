// The audit log's hash chain and seals: what an edit, a deletion, a
// reordering or another party's key does to `verify_audit`.
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/protocol/audit.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/digest.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"

namespace pr = chorus::protocol;

namespace {

struct ChainPki {
  pr::KeyPair ca = pr::make_ca("audit-ca");
  pr::KeyPair node =
      pr::issue_certificate(ca, "alpha", pr::CertRole::kNode, {});
  pr::KeyPair other =
      pr::issue_certificate(ca, "mallory", pr::CertRole::kNode, {});
};

const ChainPki& chain_pki() {
  static ChainPki p;
  return p;
}

pr::AuditRecord record(std::uint64_t id, std::int64_t inputs) {
  pr::AuditRecord r;
  r.peer = "coordinator";
  r.kind = "predict";
  r.request_id = id;
  r.round = 1;
  r.inputs = inputs;
  return r;
}

// Writes `n` records, sealed every `every` lines and at close.
void write_log(const std::filesystem::path& path, int n, int every = 3,
               const pr::KeyPair* key = nullptr) {
  pr::AuditLog log(
      path, pr::AuditSigner{.name = "alpha",
                            .key_pem = (key ? *key : chain_pki().node).key_pem,
                            .seal_every = every});
  for (int i = 1; i <= n; ++i) log.append(record(i, 10 * i));
}

std::vector<std::string> lines_of(const std::filesystem::path& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

void write_lines(const std::filesystem::path& path,
                 const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  chorus::write_file_atomic(path, text);
}

pr::AuditVerification verify(const std::filesystem::path& path) {
  return pr::verify_audit(path, chain_pki().node.cert_pem);
}

}  // namespace

TEST_CASE("audit chain: a sealed log verifies, and reopening continues it") {
  chorus::testing::TempDir dir;
  const auto path = dir / "audit.jsonl";
  write_log(path, 7);
  auto v = verify(path);
  CHECK(v.intact);
  CHECK(v.problem.empty());
  // 7 records and 3 seals (after 3 records, after 3 more, at close).
  CHECK(v.lines == 10);
  CHECK(v.seals == 3);
  CHECK(v.last_sealed_line == 10);
  CHECK(v.signer == "alpha");
  // Seals are not requests.
  auto s = pr::summarise_audit(path);
  CHECK(s.requests == 7);
  CHECK(s.seals == 3);
  CHECK(s.malformed_lines == 0);
  CHECK(s.by_kind.count("seal") == 0);
  // A restarted node goes on with the same chain.
  write_log(path, 2);
  v = verify(path);
  CHECK(v.intact);
  CHECK(v.lines == 13);
  CHECK(v.seals == 4);
  // Without a seal at the end the chain still holds: the tail is reported
  // unsealed, not tampered.
  {
    pr::AuditLog unsigned_log(path);
    unsigned_log.append(record(99, 1));
  }
  v = verify(path);
  CHECK(v.intact);
  CHECK(v.last_sealed_line == 13);
  CHECK(v.lines == 14);
}

TEST_CASE(
    "audit summary: the charged count says whether a kept ledger holds it") {
  chorus::testing::TempDir dir;
  const auto path = dir / "audit.jsonl";
  {
    pr::AuditLog log(path);
    auto r = record(1, 100);
    r.spent = 100;
    log.append(r);
  }
  auto s = pr::summarise_audit(path);
  CHECK(s.spent == 100);
  CHECK(s.ledger);
  CHECK(lines_of(path).back().find("\"ledger\"") == std::string::npos);
  // A node without budgets: its count starts at 0 at each start.
  {
    pr::AuditLog log(path);
    auto r = record(2, 40);
    r.spent = 40;
    r.ledger = false;
    log.append(r);
  }
  s = pr::summarise_audit(path);
  CHECK(s.spent == 40);
  CHECK_FALSE(s.ledger);
  CHECK(s.inputs_answered == 140);
  CHECK(lines_of(path).back().find("\"ledger\":false") != std::string::npos);
}

TEST_CASE("audit chain: an edit, a deletion and a reordering are found") {
  chorus::testing::TempDir dir;
  const auto path = dir / "audit.jsonl";
  write_log(path, 7);
  const auto good = lines_of(path);
  REQUIRE(good.size() == 10);

  SUBCASE("an edited line") {
    auto lines = good;
    const auto at = lines[1].find("\"inputs\":20");
    REQUIRE(at != std::string::npos);
    lines[1].replace(at, 11, "\"inputs\":2");
    write_lines(path, lines);
    auto v = verify(path);
    CHECK_FALSE(v.intact);
    CHECK(v.first_bad_line == 2);
    CHECK(v.problem.find("line 3 does not follow it") != std::string::npos);
  }
  SUBCASE("a deleted line") {
    auto lines = good;
    lines.erase(lines.begin() + 4);  // Record 4 (after the first seal).
    write_lines(path, lines);
    auto v = verify(path);
    CHECK_FALSE(v.intact);
    CHECK(v.first_bad_line == 4);
  }
  SUBCASE("two lines swapped") {
    auto lines = good;
    std::swap(lines[5], lines[6]);
    write_lines(path, lines);
    auto v = verify(path);
    CHECK_FALSE(v.intact);
    CHECK(v.first_bad_line == 5);
  }
  SUBCASE("the first line deleted") {
    auto lines = good;
    lines.erase(lines.begin());
    write_lines(path, lines);
    auto v = verify(path);
    CHECK(v.first_bad_line == 1);
    CHECK(v.problem.find("does not start the chain") != std::string::npos);
  }
  SUBCASE("a rewritten chain fails at the next seal") {
    // Someone edits record 2 and recomputes every hash after it: the chain
    // holds, but the seal signed over the old head does not.
    auto lines = good;
    const auto at = lines[1].find("\"inputs\":20");
    lines[1].replace(at, 11, "\"inputs\":2");
    std::string head = pr::kAuditGenesis;
    for (auto& l : lines) {
      const auto p = l.find("\"prev\":\"");
      REQUIRE(p != std::string::npos);
      l.replace(p + 8, 64, head);
      // The same hash the log uses: lower-case hex SHA-256 of the line.
      head = pr::to_hex(pr::sha256(l));
    }
    write_lines(path, lines);
    auto v = verify(path);
    CHECK_FALSE(v.intact);
    CHECK(v.first_bad_line == 4);  // The first seal.
    CHECK(v.problem.find("the seal does not verify") != std::string::npos);
  }
  SUBCASE("another party's key") {
    chorus::testing::TempDir other;
    write_log(other / "audit.jsonl", 4, 3, &chain_pki().other);
    auto v = verify(other / "audit.jsonl");
    CHECK_FALSE(v.intact);
    CHECK(v.first_bad_line == 4);
    CHECK(v.problem.find("'alpha''s certificate") != std::string::npos);
  }
  SUBCASE("a torn last line") {
    chorus::write_file_atomic(path,
                              chorus::read_file(path) + "{\"kind\":\"pre");
    auto v = verify(path);
    CHECK_FALSE(v.intact);
    CHECK(v.first_bad_line == 11);
  }
}

namespace {

// One side's view of a request: the node's log names the coordinator, the
// coordinator's names the node.
pr::AuditRecord sent(const std::string& peer, std::uint64_t id,
                     std::int64_t inputs, const std::string& outcome = "OK",
                     std::uint32_t round = 1) {
  auto r = record(id, inputs);
  r.peer = peer;
  r.round = round;
  r.outcome = outcome;
  return r;
}

// A node log (sealed by "alpha" unless `signer` is empty) and a coordinator
// log with the same requests, plus one to "beta" the node never saw.
struct TwoLogs {
  chorus::testing::TempDir dir;
  std::filesystem::path node = dir / "audit.jsonl";
  std::filesystem::path coordinator = dir / "requests.jsonl";

  explicit TwoLogs(const std::vector<pr::AuditRecord>& at_node,
                   const std::vector<pr::AuditRecord>& at_coordinator,
                   bool sealed = true) {
    {
      std::optional<pr::AuditSigner> signer;
      if (sealed)
        signer = pr::AuditSigner{.name = "alpha",
                                 .key_pem = chain_pki().node.key_pem,
                                 .seal_every = 2};
      pr::AuditLog n(node, signer);
      for (const auto& r : at_node) n.append(r);
    }
    pr::AuditLog c(coordinator);
    c.append(sent("beta", 1, 64));
    for (const auto& r : at_coordinator) c.append(r);
  }
};

}  // namespace

TEST_CASE("audit reconcile: logs that agree, and what each side lacks") {
  const std::vector<pr::AuditRecord> node{
      sent("coordinator", 1, 256), sent("coordinator", 2, 256),
      sent("coordinator", 3, 100, "RESOURCE_EXHAUSTED"),
      // The connection dropped: ids start again at 1.
      sent("coordinator", 1, 256, "OK", 2)};
  std::vector<pr::AuditRecord> coordinator;
  for (auto r : node) {
    r.peer = "alpha";
    coordinator.push_back(r);
  }
  SUBCASE("the same requests on both sides") {
    TwoLogs logs(node, coordinator);
    auto r = pr::reconcile_audit(logs.node, logs.coordinator);
    CHECK(r.node == "alpha");  // From the node log's seals.
    CHECK(r.coordinator == "coordinator");
    CHECK(r.matched == 4);
    CHECK(r.agrees());
  }
  SUBCASE("a request missing from the coordinator's log") {
    auto fewer = coordinator;
    fewer.erase(fewer.begin() + 1);
    TwoLogs logs(node, fewer);
    auto r = pr::reconcile_audit(logs.node, logs.coordinator);
    CHECK_FALSE(r.agrees());
    REQUIRE(r.only_node.size() == 1);
    CHECK(r.only_node[0].record.request_id == 2);
    CHECK(r.only_coordinator.empty());
    CHECK(r.matched == 3);
  }
  SUBCASE("a request missing from the node's log") {
    auto fewer = node;
    fewer.erase(fewer.begin());
    TwoLogs logs(fewer, coordinator);
    auto r = pr::reconcile_audit(logs.node, logs.coordinator);
    REQUIRE(r.only_coordinator.size() == 1);
    CHECK(r.only_coordinator[0].record.request_id == 1);
    CHECK(r.only_coordinator[0].record.round == 1);
    CHECK(r.only_node.empty());
  }
  SUBCASE("inputs that differ are different requests") {
    auto changed = coordinator;
    changed[0].inputs = 999;
    TwoLogs logs(node, changed);
    auto r = pr::reconcile_audit(logs.node, logs.coordinator);
    CHECK(r.only_node.size() == 1);
    CHECK(r.only_coordinator.size() == 1);
  }
  SUBCASE("the node answered, the coordinator gave up") {
    auto late = coordinator;
    late[1].outcome = "DEADLINE_EXCEEDED";
    TwoLogs logs(node, late);
    auto r = pr::reconcile_audit(logs.node, logs.coordinator);
    REQUIRE(r.disagree.size() == 1);
    CHECK(r.disagree[0].first.record.outcome == "OK");
    CHECK(r.disagree[0].second.record.outcome == "DEADLINE_EXCEEDED");
    CHECK(r.matched == 3);
  }
  SUBCASE("an answer the node could not deliver agrees with a failed call") {
    auto with_undelivered = node;
    auto u = node[1];
    u.kind = "undelivered";
    u.outcome = "UNAVAILABLE";
    with_undelivered.insert(with_undelivered.begin() + 2, u);
    auto lost = coordinator;
    lost[1].outcome = "UNAVAILABLE";
    TwoLogs logs(with_undelivered, lost);
    auto r = pr::reconcile_audit(logs.node, logs.coordinator);
    CHECK(r.agrees());
    CHECK(r.matched == 4);
  }
  SUBCASE("a sealed log is not another node's") {
    TwoLogs logs(node, coordinator);
    CHECK_THROWS_WITH(pr::reconcile_audit(logs.node, logs.coordinator, "beta"),
                      doctest::Contains("is sealed by 'alpha', not 'beta'"));
  }
  SUBCASE("an unsealed node log needs the node's name") {
    TwoLogs logs(node, coordinator, /*sealed=*/false);
    CHECK_THROWS_WITH(pr::reconcile_audit(logs.node, logs.coordinator),
                      doctest::Contains("--node NAME"));
    CHECK(pr::reconcile_audit(logs.node, logs.coordinator, "alpha").agrees());
    // Under another name, nothing matches.
    auto r = pr::reconcile_audit(logs.node, logs.coordinator, "beta");
    CHECK(r.only_node.size() == 4);
    CHECK(r.only_coordinator.size() == 1);
  }
}
