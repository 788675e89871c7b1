// TLS contexts for the coordinator's server and the nodes' clients: TLS 1.2
// or later, the federation's CA, mutual authentication.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <asio/ssl/host_name_verification.hpp>
#include <string>
#include <vector>

#include "chorus/core/fs.hpp"
#include "chorus/protocol/channel.hpp"
#include "chorus/protocol/identity.hpp"
#include "envelope_io.hpp"

namespace chorus::protocol {
namespace {

void configure_common(asio::ssl::context& ctx, const TlsMaterial& tls) {
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

}  // namespace

std::string envelope_io::peer_certificate_names(SSL* ssl) {
  const auto* names =
      static_cast<const std::string*>(SSL_get_ex_data(ssl, names_index()));
  return names ? *names : std::string();
}

TlsMaterial TlsMaterial::load(const std::filesystem::path& ca,
                              const std::filesystem::path& cert,
                              const std::filesystem::path& key) {
  return {read_file(ca), read_file(cert), read_file(key)};
}

asio::ssl::context make_server_context(const TlsMaterial& tls) {
  asio::ssl::context ctx(asio::ssl::context::tls_server);
  configure_common(ctx, tls);
  ctx.set_verify_mode(asio::ssl::verify_peer |
                      asio::ssl::verify_fail_if_no_peer_cert);
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
