#include "chorus/protocol/certs.hpp"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <map>
#include <set>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/protocol/identity.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

namespace pr = chorus::protocol;
using chorus::testing::code_of;
namespace fs = std::filesystem;

namespace {

X509* parse(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return cert;
}

// Verifies `leaf` against `ca` with OpenSSL's own chain verification.
int verify(const std::string& ca_pem, const std::string& leaf_pem,
           int purpose) {
  X509* ca = parse(ca_pem);
  X509* leaf = parse(leaf_pem);
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, nullptr);
  X509_STORE_CTX_set_purpose(ctx, purpose);
  int ok = X509_verify_cert(ctx);
  int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_free(leaf);
  X509_free(ca);
  return err;
}

unsigned mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

}  // namespace

TEST_CASE("certs: init creates a CA and verifiable leaves with private keys") {
  chorus::testing::TempDir dir;
  auto written = pr::init_deployment(dir.path(), {"localhost", "127.0.0.1"},
                                     {"hospital-a", "lab-b"}, 30);
  // Four key pairs and the CA's (empty) revocation list.
  CHECK(written.size() == 9);
  CHECK(written.back() == dir / "crl.pem");
  CHECK(pr::read_index(dir.path()).size() == 3);
  for (const char* stem : {"ca", "coordinator", "hospital-a", "lab-b"}) {
    CAPTURE(stem);
    CHECK(mode_of(dir / (std::string(stem) + ".key")) == 0600);
    CHECK(mode_of(dir / (std::string(stem) + ".crt")) == 0644);
  }
  const auto ca = chorus::read_file(dir / "ca.crt");
  const auto coordinator = chorus::read_file(dir / "coordinator.crt");
  const auto node = chorus::read_file(dir / "hospital-a.crt");
  CHECK(verify(ca, coordinator, X509_PURPOSE_SSL_SERVER) == X509_V_OK);
  CHECK(verify(ca, node, X509_PURPOSE_SSL_CLIENT) == X509_V_OK);
  // A node certificate cannot serve as a TLS server.
  CHECK(verify(ca, node, X509_PURPOSE_SSL_SERVER) != X509_V_OK);

  auto info = pr::inspect_certificate(dir / "coordinator.crt");
  CHECK(info.subject == "CN=coordinator,O=Chorus");
  CHECK(info.issuer == "CN=chorus-ca,O=Chorus");
  CHECK(info.subject_alt_names ==
        std::vector<std::string>{"DNS:localhost", "IP:127.0.0.1"});
  CHECK(info.key_type == "EC 256 bits");
  CHECK_FALSE(info.is_ca);
  CHECK_FALSE(info.expired);
  CHECK(info.sha256_fingerprint.size() == 95);
  CHECK(pr::inspect_certificate(dir / "ca.crt").is_ca);
  CHECK(pr::certificate_common_name(node) == "hospital-a");
  CHECK(pr::inspect_certificate(dir / "lab-b.crt").subject_alt_names ==
        std::vector<std::string>{"DNS:lab-b"});
}

TEST_CASE("certs: init refuses to overwrite a CA and bad names") {
  chorus::testing::TempDir dir;
  pr::init_deployment(dir.path(), {"localhost"}, {"a"});
  const auto ca_key = chorus::read_file(dir / "ca.key");
  std::string msg;
  CHECK(code_of([&] { pr::init_deployment(dir.path(), {"localhost"}, {"b"}); },
                &msg) == chorus::Code::kAlreadyExists);
  CHECK(msg.find("add-node") != std::string::npos);
  CHECK(chorus::read_file(dir / "ca.key") == ca_key);

  chorus::testing::TempDir other;
  CHECK(code_of([&] {
          pr::init_deployment(other.path(), {"localhost"}, {"a", "a"});
        }) == chorus::Code::kInvalidArgument);
  CHECK(code_of([&] {
          pr::init_deployment(other.path(), {"localhost"}, {"ca"});
        }) == chorus::Code::kInvalidArgument);
  CHECK(
      code_of([&] { pr::init_deployment(other.path(), {"bad host!"}, {"a"}); },
              &msg) == chorus::Code::kInvalidArgument);
  CHECK(msg.find("neither an IP address nor a DNS name") != std::string::npos);
  CHECK(code_of([&] {
          pr::init_deployment(other.path(), {"localhost"}, {"x y"});
        }) == chorus::Code::kInvalidArgument);
  CHECK(fs::is_empty(other.path()));
}

TEST_CASE("certs: add-node issues one more node and touches nothing else") {
  chorus::testing::TempDir dir;
  pr::init_deployment(dir.path(), {"localhost"}, {"a"});
  std::map<std::string, std::string> before;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    before[entry.path().filename()] = chorus::read_file(entry.path());
  }
  auto written = pr::add_node(dir.path(), "c", 10);
  CHECK(written.size() == 2);
  for (const auto& [name, bytes] : before) {
    CAPTURE(name);
    // The CA's index and CRL record what it issued; nothing else changes.
    if (name == "index.txt" || name == "crl.pem") continue;
    CHECK(chorus::read_file(dir / name) == bytes);
  }
  const auto index = pr::read_index(dir.path());
  REQUIRE(index.size() == 3);
  CHECK(index.back().name == "c");
  CHECK(index.back().serial == pr::inspect_certificate(dir / "c.crt").serial);
  CHECK(verify(chorus::read_file(dir / "ca.crt"),
               chorus::read_file(dir / "c.crt"),
               X509_PURPOSE_SSL_CLIENT) == X509_V_OK);
  CHECK(mode_of(dir / "c.key") == 0600);

  std::string msg;
  CHECK(code_of([&] { pr::add_node(dir.path(), "a"); }, &msg) ==
        chorus::Code::kAlreadyExists);
  CHECK(msg.find("never overwritten") != std::string::npos);
  chorus::testing::TempDir empty;
  CHECK(code_of([&] { pr::add_node(empty.path(), "d"); }, &msg) ==
        chorus::Code::kNotFound);
  CHECK(msg.find("certs init") != std::string::npos);
}

TEST_CASE(
    "certs: a party's own certificate is checked at start-up: expired, not "
    "yet valid, or another party's") {
  chorus::testing::TempDir dir;
  auto ca = pr::make_ca("test-ca");
  auto write = [&](const std::string& file, const pr::KeyPair& k) {
    chorus::write_file_atomic(dir / file, k.cert_pem);
    return dir / file;
  };
  const auto good =
      write("good.crt", pr::issue_certificate(ca, "alpha", pr::CertRole::kNode,
                                              {}, pr::Validity{.days = 30}));
  auto info = pr::check_own_certificate(good, "node 'alpha''s", "alpha");
  CHECK(info.days_left >= 29);
  CHECK(info.days_left <= 30);

  std::string msg;
  CHECK(
      code_of([&] { pr::check_own_certificate(good, "node 'beta''s", "beta"); },
              &msg) == chorus::Code::kFailedPrecondition);
  CHECK(msg.find("is issued to 'alpha', but this party is named 'beta'") !=
        std::string::npos);

  const auto old = write(
      "old.crt", pr::issue_certificate(
                     ca, "alpha", pr::CertRole::kNode, {},
                     pr::Validity{.not_before_offset = std::chrono::hours(-72),
                                  .days = 1}));
  CHECK(code_of([&] { pr::check_own_certificate(old, "the coordinator's"); },
                &msg) == chorus::Code::kFailedPrecondition);
  CHECK(msg.find("the coordinator's certificate") != std::string::npos);
  CHECK(msg.find("expired on") != std::string::npos);
  CHECK(pr::inspect_certificate(old).days_left < 0);

  const auto early = write(
      "early.crt", pr::issue_certificate(
                       ca, "alpha", pr::CertRole::kNode, {},
                       pr::Validity{.not_before_offset = std::chrono::hours(48),
                                    .days = 5}));
  CHECK(code_of([&] { pr::check_own_certificate(early, "x"); }, &msg) ==
        chorus::Code::kFailedPrecondition);
  CHECK(msg.find("is not valid until") != std::string::npos);
}

TEST_CASE("certs: validity windows are honoured and reported") {
  auto ca = pr::make_ca("test-ca");
  auto expired = pr::issue_certificate(
      ca, "old", pr::CertRole::kNode, {},
      pr::Validity{.not_before_offset = std::chrono::hours(-72), .days = 1});
  auto info = pr::inspect_certificate_pem(expired.cert_pem);
  CHECK(info.expired);
  CHECK(verify(ca.cert_pem, expired.cert_pem, X509_PURPOSE_SSL_CLIENT) ==
        X509_V_ERR_CERT_HAS_EXPIRED);
  auto future = pr::issue_certificate(
      ca, "early", pr::CertRole::kNode, {},
      pr::Validity{.not_before_offset = std::chrono::hours(48), .days = 1});
  CHECK(pr::inspect_certificate_pem(future.cert_pem).not_yet_valid);

  auto other_ca = pr::make_ca("other-ca");
  auto stranger =
      pr::issue_certificate(other_ca, "stranger", pr::CertRole::kNode, {});
  CHECK(verify(ca.cert_pem, stranger.cert_pem, X509_PURPOSE_SSL_CLIENT) !=
        X509_V_OK);
  CHECK(code_of([&] { pr::inspect_certificate_pem("garbage"); }) ==
        chorus::Code::kDataLoss);
  CHECK(code_of([&] {
          pr::issue_certificate({ca.key_pem, other_ca.cert_pem}, "x",
                                pr::CertRole::kNode, {});
        }) == chorus::Code::kInvalidArgument);
}

namespace {

// OpenSSL's verdict on `leaf` with the CA and a CRL (CRL checking on).
int verify_with_crl(const fs::path& ca_dir, const fs::path& leaf) {
  X509* ca = parse(chorus::read_file(ca_dir / "ca.crt"));
  X509* cert = parse(chorus::read_file(leaf));
  const auto crl_pem = chorus::read_file(ca_dir / "crl.pem");
  BIO* bio = BIO_new_mem_buf(crl_pem.data(), static_cast<int>(crl_pem.size()));
  X509_CRL* crl = PEM_read_bio_X509_CRL(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  REQUIRE(crl != nullptr);
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_add_crl(store, crl);
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, cert, nullptr);
  int ok = X509_verify_cert(ctx);
  int err = ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  X509_CRL_free(crl);
  X509_free(cert);
  X509_free(ca);
  return err;
}

}  // namespace

TEST_CASE(
    "certs: a request keeps its key at home, the CA signs and indexes it") {
  chorus::testing::TempDir ca, home;
  pr::init_deployment(ca.path(), {"localhost"}, {"a"});
  auto written = pr::request_certificate(home / "inst", "c");
  REQUIRE(written.size() == 2);
  CHECK(mode_of(home / "inst" / "c.key") == 0600);
  const auto csr = chorus::read_file(home / "inst" / "c.csr");
  CHECK(csr.find("PRIVATE KEY") == std::string::npos);
  CHECK(pr::request_common_name(csr) == "c");
  std::string msg;
  CHECK(code_of([&] { pr::request_certificate(home / "inst", "c"); }, &msg) ==
        chorus::Code::kAlreadyExists);

  const auto crt = pr::sign_request(ca.path(), home / "inst" / "c.csr",
                                    pr::SignOptions{.days = 30});
  CHECK(crt == home / "inst" / "c.crt");
  CHECK(verify(chorus::read_file(ca / "ca.crt"), chorus::read_file(crt),
               X509_PURPOSE_SSL_CLIENT) == X509_V_OK);
  const auto info = pr::inspect_certificate(crt);
  CHECK(info.common_name == "c");
  CHECK(info.days_left >= 29);
  CHECK(info.allows.size() == 1);
  CHECK(info.allows[0].find("TLS client") != std::string::npos);
  // The certificate holds the key made at home.
  X509* cert = parse(chorus::read_file(crt));
  const auto key_pem = chorus::read_file(home / "inst" / "c.key");
  BIO* bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  CHECK(X509_check_private_key(cert, key) == 1);
  EVP_PKEY_free(key);
  X509_free(cert);

  // Once per name, unless renewing; an operator is recorded as one.
  CHECK(code_of([&] { pr::sign_request(ca.path(), home / "inst" / "c.csr"); },
                &msg) == chorus::Code::kAlreadyExists);
  CHECK(msg.find("--renew") != std::string::npos);
  pr::sign_request(ca.path(), home / "inst" / "c.csr",
                   pr::SignOptions{.renew = true, .out = home / "c2.crt"});
  pr::request_certificate(home / "ops", "ops");
  pr::sign_request(ca.path(), home / "ops" / "ops.csr",
                   pr::SignOptions{.operator_role = true});
  const auto index = pr::read_index(ca.path());
  std::map<std::string, int> count;
  for (const auto& e : index) ++count[e.name + "/" + e.role];
  CHECK(count["coordinator/coordinator"] == 1);
  CHECK(count["a/node"] == 1);
  CHECK(count["c/node"] == 2);
  CHECK(count["ops/operator"] == 1);
}

TEST_CASE("certs: a tampered or foreign request is refused") {
  chorus::testing::TempDir ca, home;
  pr::init_deployment(ca.path(), {"localhost"}, {"a"});
  pr::request_certificate(home.path(), "c");
  auto csr = chorus::read_file(home / "c.csr");
  // Swap the key in the request for another: the signature no longer holds.
  auto other = pr::make_request("c");
  auto body = [](const std::string& pem) {
    auto from = pem.find('\n') + 1;
    return pem.substr(from, pem.rfind("-----END") - from);
  };
  std::string tampered = csr;
  const auto a = body(csr), b = body(other.csr_pem);
  // The public key sits at the same offset in both (same name, same curve).
  tampered.replace(tampered.find(a), a.size(),
                   a.substr(0, 120) + b.substr(120, 100) + a.substr(220));
  chorus::write_file_atomic(home / "t.csr", tampered);
  std::string msg;
  CHECK(code_of([&] { pr::sign_request(ca.path(), home / "t.csr"); }, &msg) ==
        chorus::Code::kDataLoss);
  chorus::write_file_atomic(home / "junk.csr", "not a request\n");
  CHECK(code_of([&] { pr::sign_request(ca.path(), home / "junk.csr"); },
                &msg) == chorus::Code::kDataLoss);
  CHECK(msg.find("junk.csr") != std::string::npos);
  CHECK(code_of([] { pr::make_request("ca"); }) ==
        chorus::Code::kInvalidArgument);
  // "coordinator" asks for a client certificate only through --coordinator.
  pr::request_certificate(home / "co", "coordinator");
  CHECK(code_of([&] {
          pr::sign_request(ca.path(), home / "co" / "coordinator.csr");
        }) == chorus::Code::kInvalidArgument);
  const auto co = pr::sign_request(
      ca.path(), home / "co" / "coordinator.csr",
      pr::SignOptions{.server_hosts = {"coordinator", "10.0.0.1"},
                      .renew = true});
  const auto co_info = pr::inspect_certificate(co);
  CHECK(co_info.subject_alt_names ==
        std::vector<std::string>{"DNS:coordinator", "IP:10.0.0.1"});
  CHECK(co_info.allows.front().find("TLS server") != std::string::npos);
}

TEST_CASE("certs: revocation writes a CRL that OpenSSL honours") {
  chorus::testing::TempDir ca;
  pr::init_deployment(ca.path(), {"localhost"}, {"a", "b"});
  // A fresh CA's CRL revokes nothing, and every leaf verifies with it.
  CHECK(pr::crl_revoked_serials(chorus::read_file(ca / "crl.pem")).empty());
  CHECK(verify_with_crl(ca.path(), ca / "a.crt") == X509_V_OK);

  const auto serials = pr::revoke_certificate(ca.path(), "a");
  REQUIRE(serials.size() == 1);
  CHECK(serials[0] == pr::inspect_certificate(ca / "a.crt").serial);
  CHECK(verify_with_crl(ca.path(), ca / "a.crt") == X509_V_ERR_CERT_REVOKED);
  CHECK(verify_with_crl(ca.path(), ca / "b.crt") == X509_V_OK);
  CHECK(pr::crl_revoked_serials(chorus::read_file(ca / "crl.pem")) ==
        std::set<std::string>{serials[0]});

  std::string msg;
  CHECK(code_of([&] { pr::revoke_certificate(ca.path(), "a"); }, &msg) ==
        chorus::Code::kFailedPrecondition);
  CHECK(code_of([&] { pr::revoke_certificate(ca.path(), "zed"); }, &msg) ==
        chorus::Code::kNotFound);
  CHECK(code_of([&] { pr::revoke_certificate(ca.path(), "b", "ABCD"); },
                &msg) == chorus::Code::kNotFound);
  // By serial, in any case: only that one.
  auto b_serial = pr::inspect_certificate(ca / "b.crt").serial;
  std::string lower = b_serial;
  for (auto& ch : lower) ch = static_cast<char>(std::tolower(ch));
  CHECK(pr::revoke_certificate(ca.path(), "b", lower) ==
        std::vector<std::string>{b_serial});
  CHECK(pr::crl_revoked_serials(chorus::read_file(ca / "crl.pem")).size() == 2);
  // The index survives a round trip, revocations included.
  for (const auto& e : pr::read_index(ca.path())) {
    CAPTURE(e.name);
    CHECK(e.revoked() == (e.name == "a" || e.name == "b"));
  }
}

TEST_CASE("certs: a CA made before the index is indexed from its files") {
  chorus::testing::TempDir ca;
  pr::init_deployment(ca.path(), {"localhost"}, {"a", "b"});
  fs::remove(ca / "index.txt");
  auto index = pr::read_index(ca.path());
  REQUIRE(index.size() == 3);
  std::set<std::string> names;
  for (const auto& e : index) names.insert(e.name + "/" + e.role);
  CHECK(names ==
        std::set<std::string>{"a/node", "b/node", "coordinator/coordinator"});
  // A malformed index is refused, naming the line.
  chorus::write_file_atomic(ca / "index.txt", "V\tonly-two\n");
  std::string msg;
  CHECK(code_of([&] { pr::read_index(ca.path()); }, &msg) ==
        chorus::Code::kDataLoss);
  CHECK(msg.find("line 1") != std::string::npos);
  CHECK(code_of([] { pr::crl_revoked_serials("no crl here"); }) ==
        chorus::Code::kDataLoss);
}
