#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

struct x509_st;  // OpenSSL's X509.

namespace chorus::protocol {

/// A certificate's subject alternative names, as "DNS:name" and
/// "IP:address" (IPv4 or IPv6), in the certificate's order.
std::vector<std::string> subject_alt_names(const x509_st* cert);

/// Throws `chorus::Error` (INVALID_ARGUMENT) unless `identity` is 1 to 64
/// characters of [A-Za-z0-9._-] starting with a letter or digit: a name that
/// is safe as a certificate CN, a file name and a log value. Node and
/// coordinator names follow this rule.
void validate_identity(std::string_view identity);

/// A certificate's serial number as upper-case hex (`chorus certs list`
/// and `show` print it so).
std::string serial_hex(const x509_st* cert);

/// The serial numbers a PEM CRL (or several, concatenated) revokes, as
/// `serial_hex` prints them. Throws `chorus::Error` (DATA_LOSS when the
/// text holds no CRL or a malformed one).
std::set<std::string> crl_revoked_serials(const std::string& crl_pem);

}  // namespace chorus::protocol
