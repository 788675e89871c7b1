#include "chorus/protocol/identity.hpp"

#include <arpa/inet.h>
#include <openssl/x509v3.h>

#include "chorus/core/error.hpp"

namespace chorus::protocol {
namespace {

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
}

}  // namespace

std::vector<std::string> subject_alt_names(const x509_st* cert) {
  std::vector<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type == GEN_DNS) {
      out.push_back("DNS:" +
                    std::string(reinterpret_cast<const char*>(
                                    ASN1_STRING_get0_data(gn->d.dNSName)),
                                ASN1_STRING_length(gn->d.dNSName)));
    } else if (gn->type == GEN_IPADD) {
      const auto* bytes = ASN1_STRING_get0_data(gn->d.iPAddress);
      const int len = ASN1_STRING_length(gn->d.iPAddress);
      char buf[INET6_ADDRSTRLEN] = {};
      inet_ntop(len == 4 ? AF_INET : AF_INET6, bytes, buf, sizeof buf);
      out.push_back(std::string("IP:") + buf);
    }
  }
  GENERAL_NAMES_free(names);
  return out;
}

void validate_identity(std::string_view identity) {
  CHORUS_CHECK(!identity.empty() && identity.size() <= 64,
               "identity '{}' must be 1 to 64 characters long", identity);
  CHORUS_CHECK(is_alnum(identity.front()),
               "identity '{}' must start with a letter or digit", identity);
  for (char c : identity) {
    CHORUS_CHECK(is_alnum(c) || c == '.' || c == '_' || c == '-',
                 "identity '{}' contains '{}'; use letters, digits, '.', '_' "
                 "or '-'",
                 identity, c);
  }
}

}  // namespace chorus::protocol
