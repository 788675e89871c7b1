#include "chorus/protocol/digest.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

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

std::string from_hex(std::string_view hex) {
  auto digit = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    fail(Code::kInvalidArgument, "'{}' is not hexadecimal", hex);
  };
  CHORUS_CHECK(hex.size() % 2 == 0, "'{}' is not hexadecimal (odd length)",
               hex);
  std::string out(hex.size() / 2, '\0');
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<char>(digit(hex[2 * i]) * 16 + digit(hex[2 * i + 1]));
  }
  return out;
}

namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertFree {
  void operator()(X509* c) const { X509_free(c); }
};
struct MdFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

std::unique_ptr<BIO, BioFree> bio_of(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

}  // namespace

std::string sign_sha256(const std::string& key_pem, std::string_view message) {
  auto bio = bio_of(key_pem);
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    fail(Code::kInvalidArgument, "the signing key is not a PEM private key");
  }
  std::unique_ptr<EVP_MD_CTX, MdFree> ctx(EVP_MD_CTX_new());
  std::size_t size = 0;
  const auto* data = reinterpret_cast<const unsigned char*>(message.data());
  CHORUS_CHECK_CODE(
      ctx &&
          EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr,
                             key.get()) == 1 &&
          EVP_DigestSign(ctx.get(), nullptr, &size, data, message.size()) == 1,
      Code::kInternal, "EVP_DigestSign failed");
  std::string signature(size, '\0');
  CHORUS_CHECK_CODE(
      EVP_DigestSign(ctx.get(),
                     reinterpret_cast<unsigned char*>(signature.data()), &size,
                     data, message.size()) == 1,
      Code::kInternal, "EVP_DigestSign failed");
  signature.resize(size);
  return signature;
}

bool verify_sha256(const std::string& cert_pem, std::string_view message,
                   std::string_view signature) {
  auto bio = bio_of(cert_pem);
  std::unique_ptr<X509, CertFree> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    fail(Code::kInvalidArgument, "not a PEM certificate");
  }
  EVP_PKEY* key = X509_get0_pubkey(cert.get());
  std::unique_ptr<EVP_MD_CTX, MdFree> ctx(EVP_MD_CTX_new());
  const bool ok =
      key && ctx &&
      EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) ==
          1 &&
      EVP_DigestVerify(ctx.get(),
                       reinterpret_cast<const unsigned char*>(signature.data()),
                       signature.size(),
                       reinterpret_cast<const unsigned char*>(message.data()),
                       message.size()) == 1;
  ERR_clear_error();
  return ok;
}

}  // namespace chorus::protocol
