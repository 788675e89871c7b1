#include "chorus/protocol/digest.hpp"

#include <openssl/evp.h>

#include "chorus/core/error.hpp"

namespace chorus::protocol {

std::string sha256(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  CHORUS_CHECK_CODE(EVP_Digest(bytes.data(), bytes.size(), md, &len,
                               EVP_sha256(), nullptr) == 1,
                    Code::kInternal, "EVP_Digest(sha256) failed");
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string to_hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

}  // namespace chorus::protocol
