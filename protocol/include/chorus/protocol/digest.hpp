#pragma once

#include <string>
#include <string_view>

namespace chorus::protocol {

/// The SHA-256 digest of `bytes`: 32 raw bytes (OpenSSL EVP).
std::string sha256(std::string_view bytes);

/// Lower-case hexadecimal of `bytes`, e.g. for logs and manifests.
std::string to_hex(std::string_view bytes);

/// The bytes of lower-case or upper-case hexadecimal `hex`. Throws
/// `chorus::Error` (INVALID_ARGUMENT) for anything else.
std::string from_hex(std::string_view hex);

/// A signature of SHA-256(`message`) with the PEM private key `key_pem`
/// (a party's own key; ECDSA for Chorus's P-256 keys), DER-encoded. Throws
/// `chorus::Error` (INVALID_ARGUMENT for a key that does not parse).
std::string sign_sha256(const std::string& key_pem, std::string_view message);

/// Whether `signature` (from `sign_sha256`) signs `message` with the key of
/// the PEM certificate `cert_pem`. Throws `chorus::Error`
/// (INVALID_ARGUMENT for a certificate that does not parse).
bool verify_sha256(const std::string& cert_pem, std::string_view message,
                   std::string_view signature);

}  // namespace chorus::protocol
