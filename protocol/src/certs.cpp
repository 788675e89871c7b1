#include "chorus/protocol/certs.hpp"

#include <arpa/inet.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <memory>
#include <set>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/protocol/identity.hpp"

namespace chorus::protocol {
namespace {

namespace fs = std::filesystem;

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using Bignum = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using Extension = std::unique_ptr<X509_EXTENSION,
                                  Deleter<X509_EXTENSION, X509_EXTENSION_free>>;

// Throws INTERNAL with OpenSSL's queued error text.
[[noreturn]] void fail_openssl(std::string_view what) {
  std::string detail;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!detail.empty()) detail += "; ";
    detail += buf;
  }
  fail(Code::kInternal, "openssl: {} failed{}{}", what,
       detail.empty() ? "" : ": ", detail);
}

void ensure(bool ok, std::string_view what) {
  if (!ok) fail_openssl(what);
}

std::string bio_string(BIO* bio) {
  BUF_MEM* mem = nullptr;
  BIO_get_mem_ptr(bio, &mem);
  return mem ? std::string(mem->data, mem->length) : std::string();
}

Bio mem_bio() {
  Bio bio(BIO_new(BIO_s_mem()));
  ensure(bio != nullptr, "BIO_new");
  return bio;
}

PKey new_key() {
  PKey key(EVP_EC_gen("P-256"));
  ensure(key != nullptr, "EC P-256 key generation");
  return key;
}

std::string key_pem(EVP_PKEY* key) {
  auto bio = mem_bio();
  ensure(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr,
                                  nullptr) == 1,
         "PEM_write_bio_PrivateKey");
  return bio_string(bio.get());
}

std::string cert_pem(X509* cert) {
  auto bio = mem_bio();
  ensure(PEM_write_bio_X509(bio.get(), cert) == 1, "PEM_write_bio_X509");
  return bio_string(bio.get());
}

PKey read_key(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PKey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  CHORUS_CHECK_CODE(key != nullptr, Code::kDataLoss, "not a PEM private key");
  return key;
}

Cert read_cert(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    fail(Code::kDataLoss, "not a PEM certificate");
  }
  return cert;
}

void add_extension(X509* cert, X509V3_CTX* ctx, int nid,
                   const std::string& value) {
  Extension ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  ensure(ext != nullptr,
         fmt::format("extension {}={}", OBJ_nid2sn(nid), value));
  ensure(X509_add_ext(cert, ext.get(), -1) == 1, "X509_add_ext");
}

bool is_ip_address(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string san_entry(const std::string& host) {
  if (is_ip_address(host)) return "IP:" + host;
  CHORUS_CHECK(!host.empty() && host.size() <= 253 &&
                   host.find_first_not_of("abcdefghijklmnopqrstuvwxyz"
                                          "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                          "0123456789.-") == std::string::npos,
               "'{}' is neither an IP address nor a DNS name", host);
  return "DNS:" + host;
}

// Builds and signs a certificate. `issuer`/`issuer_key` null: self-signed.
Cert build_cert(EVP_PKEY* key, const std::string& cn, CertRole role,
                const std::vector<std::string>& hosts, const Validity& validity,
                X509* issuer, EVP_PKEY* issuer_key) {
  CHORUS_CHECK(validity.days > 0,
               "certificate validity must be at least one day");
  Cert cert(X509_new());
  ensure(cert != nullptr, "X509_new");
  ensure(X509_set_version(cert.get(), X509_VERSION_3) == 1, "X509_set_version");
  Bignum serial(BN_new());
  ensure(serial && BN_rand(serial.get(), 127, BN_RAND_TOP_ANY,
                           BN_RAND_BOTTOM_ANY) == 1,
         "serial number");
  ensure(BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) !=
             nullptr,
         "BN_to_ASN1_INTEGER");
  const long start = static_cast<long>(validity.not_before_offset.count());
  ensure(X509_gmtime_adj(X509_getm_notBefore(cert.get()), start) != nullptr &&
             X509_gmtime_adj(X509_getm_notAfter(cert.get()),
                             start + 86400L * validity.days) != nullptr,
         "validity");
  ensure(X509_set_pubkey(cert.get(), key) == 1, "X509_set_pubkey");
  X509_NAME* subject = X509_get_subject_name(cert.get());
  ensure(
      X509_NAME_add_entry_by_txt(
          subject, "O", MBSTRING_ASC,
          reinterpret_cast<const unsigned char*>("Chorus"), -1, -1, 0) == 1 &&
          X509_NAME_add_entry_by_txt(
              subject, "CN", MBSTRING_ASC,
              reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
              0) == 1,
      "subject name");
  ensure(X509_set_issuer_name(
             cert.get(), issuer ? X509_get_subject_name(issuer) : subject) == 1,
         "issuer name");

  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : cert.get(), cert.get(), nullptr,
                 nullptr, 0);
  add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  add_extension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
  if (role == CertRole::kCa) {
    add_extension(cert.get(), &ctx, NID_basic_constraints,
                  "critical,CA:TRUE,pathlen:0");
    add_extension(cert.get(), &ctx, NID_key_usage,
                  "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature");
    add_extension(cert.get(), &ctx, NID_ext_key_usage,
                  role == CertRole::kCoordinator ? "serverAuth,clientAuth"
                                                 : "clientAuth");
    std::set<std::string> sans;
    std::string san;
    auto add = [&](const std::string& entry) {
      if (sans.insert(entry).second) san += (san.empty() ? "" : ",") + entry;
    };
    if (role == CertRole::kNode) add("DNS:" + cn);
    for (const auto& h : hosts) add(san_entry(h));
    CHORUS_CHECK(!san.empty(),
                 "the coordinator's certificate needs at least one host");
    add_extension(cert.get(), &ctx, NID_subject_alt_name, san);
  }
  ensure(X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) > 0,
         "X509_sign");
  return cert;
}

std::string asn1_time(const ASN1_TIME* t) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string name_string(const X509_NAME* name) {
  auto bio = mem_bio();
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  return bio_string(bio.get());
}

void write_pair(const fs::path& dir, const std::string& stem,
                const KeyPair& pair, std::vector<fs::path>& written) {
  write_file_atomic(dir / (stem + ".key"), pair.key_pem,
                    fs::perms::owner_read | fs::perms::owner_write);
  write_file_atomic(dir / (stem + ".crt"), pair.cert_pem);
  written.push_back(dir / (stem + ".crt"));
  written.push_back(dir / (stem + ".key"));
}

void check_node_name(const std::string& name) {
  validate_identity(name);
  CHORUS_CHECK(name != "ca" && name != "coordinator",
               "'{}' is reserved for the deployment's own files; pick another "
               "node name",
               name);
}

}  // namespace

KeyPair make_ca(const std::string& name, const Validity& validity) {
  validate_identity(name);
  auto key = new_key();
  auto cert = build_cert(key.get(), name, CertRole::kCa, {}, validity, nullptr,
                         nullptr);
  return {key_pem(key.get()), cert_pem(cert.get())};
}

KeyPair issue_certificate(const KeyPair& ca, const std::string& name,
                          CertRole role, const std::vector<std::string>& hosts,
                          const Validity& validity) {
  validate_identity(name);
  CHORUS_CHECK(role != CertRole::kCa, "use make_ca for a CA");
  auto ca_key = read_key(ca.key_pem);
  auto ca_cert = read_cert(ca.cert_pem);
  CHORUS_CHECK(X509_check_private_key(ca_cert.get(), ca_key.get()) == 1,
               "the CA key does not match the CA certificate");
  auto key = new_key();
  auto cert = build_cert(key.get(), name, role, hosts, validity, ca_cert.get(),
                         ca_key.get());
  return {key_pem(key.get()), cert_pem(cert.get())};
}

std::vector<fs::path> init_deployment(
    const fs::path& dir, const std::vector<std::string>& coordinator_hosts,
    const std::vector<std::string>& nodes, int days) {
  CHORUS_CHECK(!coordinator_hosts.empty(),
               "certs init: name at least one coordinator host");
  CHORUS_CHECK(!nodes.empty(), "certs init: name at least one node");
  std::set<std::string> seen;
  for (const auto& n : nodes) {
    check_node_name(n);
    CHORUS_CHECK(seen.insert(n).second, "certs init: node '{}' is listed twice",
                 n);
  }
  for (const auto& h : coordinator_hosts) san_entry(h);
  std::error_code ec;
  CHORUS_CHECK_CODE(
      !fs::exists(dir / "ca.key", ec), Code::kAlreadyExists,
      "'{}' already holds a CA; use 'chorus certs add-node' to add "
      "nodes to it",
      dir.string());
  fs::create_directories(dir, ec);
  CHORUS_CHECK_CODE(!ec, Code::kInternal, "cannot create '{}': {}",
                    dir.string(), ec.message());
  const Validity validity{.days = days};
  std::vector<fs::path> written;
  auto ca = make_ca("chorus-ca", Validity{.days = days + 365});
  auto coordinator = issue_certificate(
      ca, "coordinator", CertRole::kCoordinator, coordinator_hosts, validity);
  std::vector<std::pair<std::string, KeyPair>> issued;
  for (const auto& n : nodes) {
    issued.emplace_back(
        n, issue_certificate(ca, n, CertRole::kNode, {}, validity));
  }
  // Leaves first, the CA key last: a crash midway leaves no CA to reuse.
  write_pair(dir, "coordinator", coordinator, written);
  for (const auto& [name, pair] : issued) write_pair(dir, name, pair, written);
  write_pair(dir, "ca", ca, written);
  return written;
}

std::vector<fs::path> add_node(const fs::path& ca_dir, const std::string& name,
                               int days) {
  check_node_name(name);
  std::error_code ec;
  for (const char* f : {"ca.crt", "ca.key"}) {
    CHORUS_CHECK_CODE(
        fs::exists(ca_dir / f, ec), Code::kNotFound,
        "no CA in '{}' ({} is missing); run 'chorus certs init' first",
        ca_dir.string(), f);
  }
  for (const char* ext : {".crt", ".key"}) {
    CHORUS_CHECK_CODE(
        !fs::exists(ca_dir / (name + ext), ec), Code::kAlreadyExists,
        "node '{}' already has {} in '{}'; existing keys are never "
        "overwritten",
        name, name + ext, ca_dir.string());
  }
  KeyPair ca{read_file(ca_dir / "ca.key"), read_file(ca_dir / "ca.crt")};
  std::vector<fs::path> written;
  write_pair(
      ca_dir, name,
      issue_certificate(ca, name, CertRole::kNode, {}, Validity{.days = days}),
      written);
  return written;
}

CertInfo inspect_certificate_pem(const std::string& pem) {
  auto cert = read_cert(pem);
  CertInfo info;
  info.subject = name_string(X509_get_subject_name(cert.get()));
  {
    X509_NAME* name = X509_get_subject_name(cert.get());
    const int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (idx >= 0) {
      ASN1_STRING* data =
          X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
      info.common_name = std::string(
          reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
          ASN1_STRING_length(data));
    }
  }
  info.issuer = name_string(X509_get_issuer_name(cert.get()));
  Bignum serial(ASN1_INTEGER_to_BN(X509_get_serialNumber(cert.get()), nullptr));
  if (serial) {
    char* hex = BN_bn2hex(serial.get());
    info.serial = hex ? hex : "";
    OPENSSL_free(hex);
  }
  info.not_before = asn1_time(X509_get0_notBefore(cert.get()));
  info.not_after = asn1_time(X509_get0_notAfter(cert.get()));
  info.expired = X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0;
  info.not_yet_valid =
      X509_cmp_current_time(X509_get0_notBefore(cert.get())) > 0;
  int days = 0, seconds = 0;
  if (ASN1_TIME_diff(&days, &seconds, nullptr,
                     X509_get0_notAfter(cert.get())) == 1) {
    info.days_left = days - (seconds < 0 ? 1 : 0);
  }
  info.is_ca = X509_check_ca(cert.get()) > 0;
  info.subject_alt_names = subject_alt_names(cert.get());
  if (EVP_PKEY* key = X509_get0_pubkey(cert.get())) {
    const char* type = EVP_PKEY_get0_type_name(key);
    info.key_type =
        fmt::format("{} {} bits", type ? type : "?", EVP_PKEY_get_bits(key));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  ensure(X509_digest(cert.get(), EVP_sha256(), md, &md_len) == 1,
         "X509_digest");
  for (unsigned i = 0; i < md_len; ++i) {
    info.sha256_fingerprint += fmt::format("{}{:02X}", i ? ":" : "", md[i]);
  }
  return info;
}

CertInfo inspect_certificate(const fs::path& file) {
  std::string pem = read_file(file);
  try {
    return inspect_certificate_pem(pem);
  } catch (const Error& e) {
    fail(e.code(), "'{}': {}", file.string(), e.what());
  }
}

std::string certificate_common_name(const std::string& pem) {
  auto cn = inspect_certificate_pem(pem).common_name;
  CHORUS_CHECK_CODE(!cn.empty(), Code::kDataLoss,
                    "certificate has no common name");
  return cn;
}

CertInfo check_own_certificate(const std::filesystem::path& file,
                               const std::string& who,
                               const std::string& expected_name) {
  auto info = inspect_certificate(file);
  CHORUS_CHECK_CODE(!info.expired, Code::kFailedPrecondition,
                    "{} certificate '{}' expired on {}; issue a new one with "
                    "the federation's CA",
                    who, file.string(), info.not_after);
  CHORUS_CHECK_CODE(!info.not_yet_valid, Code::kFailedPrecondition,
                    "{} certificate '{}' is not valid until {} (is this "
                    "machine's clock right?)",
                    who, file.string(), info.not_before);
  if (!expected_name.empty()) {
    const auto& cn = info.common_name;
    CHORUS_CHECK_CODE(
        cn == expected_name, Code::kFailedPrecondition,
        "{} certificate '{}' is issued to '{}', but this party is named '{}' "
        "in its config; the coordinator knows a party by its certificate's "
        "name: set the name to '{}' or use that party's certificate",
        who, file.string(), cn, expected_name, cn);
  }
  return info;
}

}  // namespace chorus::protocol
