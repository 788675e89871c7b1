#include "chorus/protocol/certs.hpp"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <map>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
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
  CHECK(written.size() == 8);
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
    CHECK(chorus::read_file(dir / name) == bytes);
  }
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
