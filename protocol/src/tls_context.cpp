// TLS contexts for the coordinator's server and the nodes' clients: TLS 1.2
// or later, the federation's CA, mutual authentication.
#include <openssl/ssl.h>

#include <asio/ssl/host_name_verification.hpp>

#include "chorus/core/fs.hpp"
#include "chorus/protocol/channel.hpp"

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

}  // namespace

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
  ctx.set_verify_callback(asio::ssl::host_name_verification(server_host));
  return ctx;
}

}  // namespace chorus::protocol
