#pragma once

#include <string>
#include <string_view>

namespace chorus::protocol {

/// The SHA-256 digest of `bytes`: 32 raw bytes (OpenSSL EVP).
std::string sha256(std::string_view bytes);

/// Lower-case hexadecimal of `bytes`, e.g. for logs and manifests.
std::string to_hex(std::string_view bytes);

}  // namespace chorus::protocol
