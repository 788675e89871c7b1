// TLS contexts for the coordinator's server and the nodes' clients: TLS 1.2
// or later, the federation's CA, mutual authentication.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <asio/ssl/host_name_verification.hpp>
#include <set>
#include <string>
#include <vector>

#include "chorus/core/fs.hpp"
#include "chorus/protocol/channel.hpp"
#include "chorus/protocol/identity.hpp"
#include "envelope_io.hpp"

namespace chorus::protocol {
namespace {

void configure_common(asio::ssl::context& ctx, const TlsMaterial& tls) {
  envelope_io::route_protobuf_logs();
  try {
    ctx.set_options(
        asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
        asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
        asio::ssl::context::no_tlsv1_1);
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
    ctx.add_certificate_authority(asio::buffer(tls.ca_pem));
    ctx.use_certificate_chain(asio::buffer(tls.cert_pem));
    ctx.use_private_key(asio::buffer(tls.key_pem), asio::ssl::context::pem);
  } catch (const std::system_error& e) {
    fail(Code::kInvalidArgument, "unusable TLS material: {}", e.what());
  }
  CHORUS_CHECK(SSL_CTX_check_private_key(ctx.native_handle()) == 1,
               "the private key does not match the certificate");
}

// The names a peer's certificate holds (CN and SANs), kept on the SSL
// object by the verify callback so that a failed handshake can say them.
void free_names(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<std::string*>(ptr);
}
int names_index() {
  static const int index =
      SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_names);
  return index;
}

std::string names_of(X509* cert) {
  std::vector<std::string> names;
  char cn[256] = {0};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn,
                                sizeof cn) > 0) {
    names.push_back(fmt::format("CN={}", cn));
  }
  for (auto& san : subject_alt_names(cert)) names.push_back(std::move(san));
  return fmt::format("{}", fmt::join(names, ", "));
}

// asio's host name check, remembering what the leaf certificate names.
struct HostCheck {
  asio::ssl::host_name_verification check;
  bool operator()(bool preverified, asio::ssl::verify_context& ctx) {
    X509_STORE_CTX* store = ctx.native_handle();
    X509* cert = X509_STORE_CTX_get_current_cert(store);
    auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(
        store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    if (cert && ssl && X509_STORE_CTX_get_error_depth(store) == 0) {
      delete static_cast<std::string*>(SSL_get_ex_data(ssl, names_index()));
      SSL_set_ex_data(ssl, names_index(), new std::string(names_of(cert)));
    }
    return check(preverified, ctx);
  }
};

// The server's verify callback: OpenSSL's verdict stands; what the peer's
// certificate names and, on failure, why it failed are kept for the log.
struct RecordPeer {
  bool operator()(bool preverified, asio::ssl::verify_context& ctx) {
    X509_STORE_CTX* store = ctx.native_handle();
    X509* cert = X509_STORE_CTX_get_current_cert(store);
    auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(
        store, SSL_get_ex_data_X509_STORE_CTX_idx()));
    if (cert && ssl &&
        (!preverified || X509_STORE_CTX_get_error_depth(store) == 0)) {
      std::string said = names_of(cert);
      if (!preverified) {
        said += fmt::format(
            "{}serial {}: {}", said.empty() ? "" : ", ", serial_hex(cert),
            X509_verify_cert_error_string(X509_STORE_CTX_get_error(store)));
      }
      delete static_cast<std::string*>(SSL_get_ex_data(ssl, names_index()));
      SSL_set_ex_data(ssl, names_index(), new std::string(std::move(said)));
    }
    return preverified;
  }
};

// Every CRL in a PEM text (the caller frees them). Throws DATA_LOSS when
// there is none or one does not parse.
std::vector<X509_CRL*> read_crls(const std::string& pem) {
  std::vector<X509_CRL*> crls;
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  CHORUS_CHECK_CODE(bio != nullptr, Code::kInternal, "BIO_new_mem_buf failed");
  while (X509_CRL* crl =
             PEM_read_bio_X509_CRL(bio, nullptr, nullptr, nullptr)) {
    crls.push_back(crl);
  }
  const unsigned long err = ERR_peek_last_error();
  BIO_free(bio);
  // Reading stops at the end of the text (PEM_R_NO_START_LINE) or at a
  // malformed CRL.
  const bool clean_end =
      err == 0 || (ERR_GET_LIB(err) == ERR_LIB_PEM &&
                   ERR_GET_REASON(err) == PEM_R_NO_START_LINE);
  ERR_clear_error();
  if (!clean_end || crls.empty()) {
    for (auto* c : crls) X509_CRL_free(c);
    fail(Code::kDataLoss, "{}",
         crls.empty() ? "the text holds no PEM CRL"
                      : "a CRL in it is malformed");
  }
  return crls;
}

// Adds the material's CRLs to the context's store and turns on checking:
// each must be signed by the CA and not past its next update, or the
// handshakes of every peer would fail.
void add_crls(asio::ssl::context& ctx, const TlsMaterial& tls) {
  X509_STORE* store = SSL_CTX_get_cert_store(ctx.native_handle());
  BIO* bio =
      BIO_new_mem_buf(tls.ca_pem.data(), static_cast<int>(tls.ca_pem.size()));
  X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  CHORUS_CHECK(ca != nullptr, "the CA certificate does not parse");
  std::vector<X509_CRL*> crls;
  try {
    crls = read_crls(tls.crl_pem);
  } catch (const Error& e) {
    X509_free(ca);
    fail(Code::kInvalidArgument, "the CRL: {}", e.what());
  }
  std::string problem;
  for (X509_CRL* crl : crls) {
    if (problem.empty() && X509_CRL_verify(crl, X509_get0_pubkey(ca)) != 1) {
      problem = "it is not signed by the federation's CA";
    }
    const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl);
    if (problem.empty() && next && X509_cmp_current_time(next) < 0) {
      problem =
          "it is past its next update; make a new one with 'chorus "
          "certs revoke' at the CA";
    }
    if (problem.empty() && X509_STORE_add_crl(store, crl) != 1) {
      problem = "OpenSSL refused to add it";
    }
    X509_CRL_free(crl);
  }
  X509_free(ca);
  ERR_clear_error();
  CHORUS_CHECK(problem.empty(), "the CRL cannot be used: {}", problem);
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
}

}  // namespace

std::string envelope_io::peer_certificate_names(SSL* ssl) {
  const auto* names =
      static_cast<const std::string*>(SSL_get_ex_data(ssl, names_index()));
  return names ? *names : std::string();
}

TlsMaterial TlsMaterial::load(const std::filesystem::path& ca,
                              const std::filesystem::path& cert,
                              const std::filesystem::path& key,
                              const std::filesystem::path& crl) {
  return {read_file(ca), read_file(cert), read_file(key),
          crl.empty() ? std::string() : read_file(crl)};
}

namespace {

// A serial number as BN_bn2hex prints it (upper-case hex).
std::string hex_of(const ASN1_INTEGER* number) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(number, nullptr);
  if (bn == nullptr) return {};
  char* hex = BN_bn2hex(bn);
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

}  // namespace

std::string serial_hex(const X509* cert) {
  return hex_of(X509_get0_serialNumber(cert));
}

std::set<std::string> crl_revoked_serials(const std::string& crl_pem) {
  std::set<std::string> serials;
  for (X509_CRL* crl : read_crls(crl_pem)) {
    STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl);
    for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i) {
      auto hex = hex_of(
          X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revoked, i)));
      if (!hex.empty()) serials.insert(std::move(hex));
    }
    X509_CRL_free(crl);
  }
  return serials;
}

asio::ssl::context make_server_context(const TlsMaterial& tls) {
  asio::ssl::context ctx(asio::ssl::context::tls_server);
  configure_common(ctx, tls);
  ctx.set_verify_mode(asio::ssl::verify_peer |
                      asio::ssl::verify_fail_if_no_peer_cert);
  ctx.set_verify_callback(RecordPeer{});
  if (!tls.crl_pem.empty()) add_crls(ctx, tls);
  return ctx;
}

asio::ssl::context make_client_context(const TlsMaterial& tls,
                                       const std::string& server_host) {
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  configure_common(ctx, tls);
  ctx.set_verify_mode(asio::ssl::verify_peer);
  ctx.set_verify_callback(
      HostCheck{asio::ssl::host_name_verification(server_host)});
  return ctx;
}

}  // namespace chorus::protocol
