#include "chorus/protocol/certs.hpp"

#include <arpa/inet.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <memory>
#include <optional>
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

// A party's subject: O=Chorus, CN=its name.
void set_subject(X509_NAME* subject, const std::string& cn) {
  ensure(
      X509_NAME_add_entry_by_txt(
          subject, "O", MBSTRING_ASC,
          reinterpret_cast<const unsigned char*>("Chorus"), -1, -1, 0) == 1 &&
          X509_NAME_add_entry_by_txt(
              subject, "CN", MBSTRING_ASC,
              reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
              0) == 1,
      "subject name");
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
  set_subject(subject, cn);
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

using Request = std::unique_ptr<X509_REQ, Deleter<X509_REQ, X509_REQ_free>>;
using Crl = std::unique_ptr<X509_CRL, Deleter<X509_CRL, X509_CRL_free>>;
using Time = std::unique_ptr<ASN1_TIME, Deleter<ASN1_TIME, ASN1_TIME_free>>;

constexpr const char* kIndexHeader =
    "# chorus CA index: status (V valid, R revoked), serial, name, role, "
    "not after, revoked at\n";

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::time_t parse_utc(const std::string& s) {
  std::tm tm{};
  const char* end = strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  CHORUS_CHECK_CODE(end != nullptr && *end == '\0', Code::kDataLoss,
                    "'{}' is not a UTC time of the form "
                    "2026-12-03T18:00:00Z",
                    s);
  return timegm(&tm);
}

void require_ca(const fs::path& ca_dir) {
  std::error_code ec;
  for (const char* f : {"ca.crt", "ca.key"}) {
    CHORUS_CHECK_CODE(
        fs::exists(ca_dir / f, ec), Code::kNotFound,
        "no CA in '{}' ({} is missing); run 'chorus certs init' first",
        ca_dir.string(), f);
  }
}

KeyPair load_ca(const fs::path& ca_dir) {
  require_ca(ca_dir);
  return {read_file(ca_dir / "ca.key"), read_file(ca_dir / "ca.crt")};
}

void write_index(const fs::path& ca_dir,
                 const std::vector<IssuedCertificate>& index) {
  std::string out = kIndexHeader;
  for (const auto& e : index) {
    out += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\n", e.revoked() ? 'R' : 'V',
                       e.serial, e.name, e.role, e.not_after,
                       e.revoked() ? e.revoked_at : "-");
  }
  write_file_atomic(ca_dir / "index.txt", out);
}

IssuedCertificate index_entry(const std::string& cert_pem,
                              const std::string& role) {
  auto info = inspect_certificate_pem(cert_pem);
  return {.serial = info.serial,
          .name = info.common_name,
          .role = role,
          .not_after = info.not_after,
          .revoked_at = {}};
}

// Appends what was just issued to the index, and (re)writes the CRL so that
// a CA directory always holds one.
void record_issued(const fs::path& ca_dir,
                   const std::vector<IssuedCertificate>& issued) {
  auto index = read_index(ca_dir);
  index.insert(index.end(), issued.begin(), issued.end());
  write_index(ca_dir, index);
  write_crl(ca_dir);
}

std::string pem_of_request(X509_REQ* req) {
  auto bio = mem_bio();
  ensure(PEM_write_bio_X509_REQ(bio.get(), req) == 1, "PEM_write_bio_X509_REQ");
  return bio_string(bio.get());
}

Request read_request(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Request req(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  if (!req) {
    ERR_clear_error();
    fail(Code::kDataLoss, "not a PEM certificate signing request");
  }
  return req;
}

std::string common_name_of(const X509_NAME* name) {
  const int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return {};
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                     ASN1_STRING_length(data));
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
  std::optional<KeyPair> coordinator;
  if (!coordinator_hosts.empty()) {
    coordinator = issue_certificate(ca, "coordinator", CertRole::kCoordinator,
                                    coordinator_hosts, validity);
  }
  std::vector<std::pair<std::string, KeyPair>> issued;
  for (const auto& n : nodes) {
    issued.emplace_back(
        n, issue_certificate(ca, n, CertRole::kNode, {}, validity));
  }
  // Leaves first, the CA key last: a crash midway leaves no CA to reuse.
  if (coordinator) write_pair(dir, "coordinator", *coordinator, written);
  for (const auto& [name, pair] : issued) write_pair(dir, name, pair, written);
  write_pair(dir, "ca", ca, written);
  std::vector<IssuedCertificate> index;
  if (coordinator) {
    index.push_back(index_entry(coordinator->cert_pem, "coordinator"));
  }
  for (const auto& [name, pair] : issued) {
    index.push_back(index_entry(pair.cert_pem, "node"));
  }
  write_index(dir, index);
  written.push_back(write_crl(dir));
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
  auto pair =
      issue_certificate(ca, name, CertRole::kNode, {}, Validity{.days = days});
  record_issued(ca_dir, {index_entry(pair.cert_pem, "node")});
  write_pair(ca_dir, name, pair, written);
  return written;
}

CertInfo inspect_certificate_pem(const std::string& pem) {
  auto cert = read_cert(pem);
  CertInfo info;
  info.subject = name_string(X509_get_subject_name(cert.get()));
  info.common_name = common_name_of(X509_get_subject_name(cert.get()));
  info.issuer = name_string(X509_get_issuer_name(cert.get()));
  info.serial = serial_hex(cert.get());
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
  if (info.is_ca) {
    info.allows.push_back("signs certificates and CRLs (a federation's CA)");
  } else {
    const std::uint32_t eku = X509_get_extended_key_usage(cert.get());
    if (eku & XKU_SSL_SERVER) {
      info.allows.push_back("TLS server (a coordinator, at its alt names)");
    }
    if (eku & XKU_SSL_CLIENT) {
      info.allows.push_back("TLS client (a node or an operator, by its name)");
    }
    if (info.allows.empty()) info.allows.push_back("nothing Chorus uses");
  }
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

// ---- Requests, signing, the index and the CRL --------------------------

namespace {

// A request may name a node, an operator or the coordinator; "ca" is the
// CA's own file name.
void check_request_name(const std::string& name) {
  validate_identity(name);
  CHORUS_CHECK(name != "ca",
               "'ca' is reserved for the CA's own files; pick another name");
}

}  // namespace

KeyRequest make_request(const std::string& name) {
  check_request_name(name);
  auto key = new_key();
  Request req(X509_REQ_new());
  ensure(req != nullptr, "X509_REQ_new");
  ensure(X509_REQ_set_version(req.get(), 0) == 1, "X509_REQ_set_version");
  X509_NAME* subject = X509_REQ_get_subject_name(req.get());
  set_subject(subject, name);
  ensure(X509_REQ_set_pubkey(req.get(), key.get()) == 1, "X509_REQ_set_pubkey");
  ensure(X509_REQ_sign(req.get(), key.get(), EVP_sha256()) > 0,
         "X509_REQ_sign");
  return {key_pem(key.get()), pem_of_request(req.get())};
}

std::vector<fs::path> request_certificate(const fs::path& out_dir,
                                          const std::string& name) {
  check_request_name(name);
  std::error_code ec;
  CHORUS_CHECK_CODE(!fs::exists(out_dir / (name + ".key"), ec),
                    Code::kAlreadyExists,
                    "'{}' already holds {}.key; existing keys are never "
                    "overwritten (to renew, send the CA a request made with "
                    "another --out directory)",
                    out_dir.string(), name);
  fs::create_directories(out_dir, ec);
  CHORUS_CHECK_CODE(!ec, Code::kInternal, "cannot create '{}': {}",
                    out_dir.string(), ec.message());
  auto request = make_request(name);
  // The key first: a request without its key would be useless.
  write_file_atomic(out_dir / (name + ".key"), request.key_pem,
                    fs::perms::owner_read | fs::perms::owner_write);
  write_file_atomic(out_dir / (name + ".csr"), request.csr_pem);
  return {out_dir / (name + ".key"), out_dir / (name + ".csr")};
}

std::string request_common_name(const std::string& csr_pem) {
  auto req = read_request(csr_pem);
  return common_name_of(X509_REQ_get_subject_name(req.get()));
}

std::vector<IssuedCertificate> read_index(const fs::path& ca_dir) {
  require_ca(ca_dir);
  std::vector<IssuedCertificate> index;
  std::error_code ec;
  const auto file = ca_dir / "index.txt";
  if (!fs::exists(file, ec)) {
    // A CA made before the index: what it issued is in its directory.
    const auto ca = read_cert(read_file(ca_dir / "ca.crt"));
    std::vector<fs::path> certs;
    for (const auto& entry : fs::directory_iterator(ca_dir)) {
      if (entry.path().extension() == ".crt" &&
          entry.path().filename() != "ca.crt") {
        certs.push_back(entry.path());
      }
    }
    std::sort(certs.begin(), certs.end());
    for (const auto& path : certs) {
      const auto pem = read_file(path);
      auto cert = read_cert(pem);
      if (X509_check_issued(ca.get(), cert.get()) != X509_V_OK) continue;
      const auto cn = common_name_of(X509_get_subject_name(cert.get()));
      index.push_back(
          index_entry(pem, cn == "coordinator" ? "coordinator" : "node"));
    }
    return index;
  }
  const auto text = read_file(file);
  std::size_t start = 0;
  int line_no = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> f;
    std::size_t from = 0;
    for (;;) {
      auto tab = line.find('\t', from);
      f.push_back(line.substr(from, tab - from));
      if (tab == std::string::npos) break;
      from = tab + 1;
    }
    CHORUS_CHECK_CODE(
        f.size() == 6 && (f[0] == "V" || f[0] == "R") &&
            (f[0] == "R") == (f[5] != "-"),
        Code::kDataLoss,
        "'{}' line {}: expected 6 tab-separated fields (status V or R, "
        "serial, name, role, not after, revoked at or -), got '{}'",
        file.string(), line_no, line);
    index.push_back({.serial = f[1],
                     .name = f[2],
                     .role = f[3],
                     .not_after = f[4],
                     .revoked_at = f[0] == "R" ? f[5] : std::string()});
  }
  return index;
}

fs::path sign_request(const fs::path& ca_dir, const fs::path& csr_file,
                      const SignOptions& options) {
  auto ca = load_ca(ca_dir);
  std::string pem = read_file(csr_file);
  Request req;
  try {
    req = read_request(pem);
  } catch (const Error& e) {
    fail(e.code(), "'{}': {}", csr_file.string(), e.what());
  }
  EVP_PKEY* pub = X509_REQ_get0_pubkey(req.get());
  if (pub == nullptr || X509_REQ_verify(req.get(), pub) != 1) {
    ERR_clear_error();
    fail(Code::kDataLoss,
         "'{}': the request's signature does not verify with its own key "
         "(altered or corrupt); ask for a new one",
         csr_file.string());
  }
  const auto name = common_name_of(X509_REQ_get_subject_name(req.get()));
  CHORUS_CHECK(!name.empty(), "'{}': the request names no party (no CN)",
               csr_file.string());
  const bool server = !options.server_hosts.empty();
  if (server) {
    validate_identity(name);
    for (const auto& h : options.server_hosts) san_entry(h);
    CHORUS_CHECK(!options.operator_role,
                 "a certificate is for a coordinator or an operator, not both");
  } else {
    check_node_name(name);
  }
  auto index = read_index(ca_dir);
  if (!options.renew) {
    for (const auto& e : index) {
      if (e.name != name || e.revoked()) continue;
      const bool expired = parse_utc(e.not_after) < std::time(nullptr);
      CHORUS_CHECK_CODE(
          expired, Code::kAlreadyExists,
          "'{}' already holds a certificate from this CA (serial {}, valid "
          "until {}); --renew issues another, or revoke that one first",
          name, e.serial, e.not_after);
    }
  }
  auto ca_key = read_key(ca.key_pem);
  auto ca_cert = read_cert(ca.cert_pem);
  auto cert =
      build_cert(pub, name, server ? CertRole::kCoordinator : CertRole::kNode,
                 options.server_hosts, Validity{.days = options.days},
                 ca_cert.get(), ca_key.get());
  const std::string cert_text = cert_pem(cert.get());
  const fs::path out = options.out.empty()
                           ? csr_file.parent_path() / (name + ".crt")
                           : options.out;
  // Recorded before it is handed out: the CA never loses track of a
  // certificate it issued.
  record_issued(ca_dir,
                {index_entry(cert_text, server                  ? "coordinator"
                                        : options.operator_role ? "operator"
                                                                : "node")});
  write_file_atomic(out, cert_text);
  return out;
}

std::vector<std::string> revoke_certificate(const fs::path& ca_dir,
                                            const std::string& name,
                                            const std::string& serial) {
  auto index = read_index(ca_dir);
  std::vector<std::string> revoked;
  bool known = false;
  const auto now = utc_now();
  std::string wanted = serial;
  for (auto& ch : wanted) ch = static_cast<char>(std::toupper(ch));
  for (auto& e : index) {
    if (e.name != name || (!wanted.empty() && e.serial != wanted)) continue;
    known = true;
    if (e.revoked()) continue;
    e.revoked_at = now;
    revoked.push_back(e.serial);
  }
  CHORUS_CHECK_CODE(
      known, Code::kNotFound,
      "the CA in '{}' issued nothing to '{}'{} (see 'chorus "
      "certs list --ca {}')",
      ca_dir.string(), name,
      wanted.empty() ? std::string() : fmt::format(" with serial {}", wanted),
      ca_dir.string());
  CHORUS_CHECK_CODE(!revoked.empty(), Code::kFailedPrecondition,
                    "every certificate of '{}' is revoked already", name);
  write_index(ca_dir, index);
  write_crl(ca_dir);
  return revoked;
}

fs::path write_crl(const fs::path& ca_dir) {
  auto ca = load_ca(ca_dir);
  auto ca_key = read_key(ca.key_pem);
  auto ca_cert = read_cert(ca.cert_pem);
  const auto index = read_index(ca_dir);
  Crl crl(X509_CRL_new());
  ensure(crl != nullptr, "X509_CRL_new");
  ensure(X509_CRL_set_version(crl.get(), X509_CRL_VERSION_2) == 1,
         "X509_CRL_set_version");
  ensure(X509_CRL_set_issuer_name(crl.get(),
                                  X509_get_subject_name(ca_cert.get())) == 1,
         "X509_CRL_set_issuer_name");
  Time now(ASN1_TIME_new());
  ensure(now && X509_gmtime_adj(now.get(), 0) != nullptr, "CRL time");
  ensure(X509_CRL_set1_lastUpdate(crl.get(), now.get()) == 1 &&
             X509_CRL_set1_nextUpdate(crl.get(),
                                      X509_get0_notAfter(ca_cert.get())) == 1,
         "CRL validity");
  std::size_t count = 0;
  for (const auto& e : index) {
    if (!e.revoked()) continue;
    ++count;
    X509_REVOKED* r = X509_REVOKED_new();
    ensure(r != nullptr, "X509_REVOKED_new");
    BIGNUM* bn = nullptr;
    ensure(BN_hex2bn(&bn, e.serial.c_str()) > 0, "serial " + e.serial);
    Bignum serial(bn);
    ASN1_INTEGER* number = BN_to_ASN1_INTEGER(serial.get(), nullptr);
    Time when(ASN1_TIME_set(nullptr, parse_utc(e.revoked_at)));
    const bool ok = number && when &&
                    X509_REVOKED_set_serialNumber(r, number) == 1 &&
                    X509_REVOKED_set_revocationDate(r, when.get()) == 1;
    ASN1_INTEGER_free(number);
    if (!ok || X509_CRL_add0_revoked(crl.get(), r) != 1) {
      X509_REVOKED_free(r);
      fail_openssl("CRL entry");
    }
  }
  ensure(X509_CRL_sort(crl.get()) == 1, "X509_CRL_sort");
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca_cert.get(), nullptr, nullptr, crl.get(), 0);
  Extension akid(X509V3_EXT_conf_nid(
      nullptr, &ctx, NID_authority_key_identifier, "keyid:always"));
  ensure(akid && X509_CRL_add_ext(crl.get(), akid.get(), -1) == 1,
         "CRL authority key identifier");
  // The CRL number grows with each CRL: the time it was made.
  ASN1_INTEGER* number = ASN1_INTEGER_new();
  ensure(number && ASN1_INTEGER_set_int64(number, std::time(nullptr)) == 1,
         "CRL number");
  const int added = X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number, 0,
                                          X509V3_ADD_DEFAULT);
  ASN1_INTEGER_free(number);
  ensure(added == 1, "CRL number extension");
  ensure(X509_CRL_sign(crl.get(), ca_key.get(), EVP_sha256()) > 0,
         "X509_CRL_sign");
  auto bio = mem_bio();
  ensure(PEM_write_bio_X509_CRL(bio.get(), crl.get()) == 1,
         "PEM_write_bio_X509_CRL");
  const auto path = ca_dir / "crl.pem";
  write_file_atomic(path, bio_string(bio.get()));
  (void)count;
  return path;
}

}  // namespace chorus::protocol
