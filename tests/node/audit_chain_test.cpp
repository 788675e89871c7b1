// The audit log's hash chain and seals: what an edit, a deletion, a
// reordering or another party's key does to `verify_audit`.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/node/audit.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/digest.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"

namespace nd = chorus::node;
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

nd::AuditRecord record(std::uint64_t id, std::int64_t inputs) {
  nd::AuditRecord r;
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
  nd::AuditLog log(
      path, nd::AuditSigner{.name = "alpha",
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

nd::AuditVerification verify(const std::filesystem::path& path) {
  return nd::verify_audit(path, chain_pki().node.cert_pem);
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
  auto s = nd::summarise_audit(path);
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
    nd::AuditLog unsigned_log(path);
    unsigned_log.append(record(99, 1));
  }
  v = verify(path);
  CHECK(v.intact);
  CHECK(v.last_sealed_line == 13);
  CHECK(v.lines == 14);
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
    std::string head = nd::kAuditGenesis;
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
