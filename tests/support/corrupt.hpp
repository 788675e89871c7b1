#pragma once
// Bad luck on disk, for tests: bytes of a file flipped where a tensor's
// values are stored (inside a zip entry's payload, not its headers), as a
// failing disk or a stray write would.

#include <torch/types.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "chorus/core/fs.hpp"

namespace chorus::testing {

/// XORs 8 bytes of `file` inside the stored values of `stored` (a tensor
/// the file holds, of at least 8 bytes). False when its bytes are not found.
inline bool flip_payload(const std::filesystem::path& file,
                         const torch::Tensor& stored) {
  auto t = stored.contiguous();
  const auto size = static_cast<std::size_t>(t.numel() * t.element_size());
  if (size < 8) return false;
  const std::string needle(static_cast<const char*>(t.data_ptr()),
                           std::min<std::size_t>(size, 64));
  auto bytes = read_file(file);
  const auto at = bytes.find(needle);
  if (at == std::string::npos) return false;
  for (std::size_t k = 0; k < 8; ++k) bytes[at + k] ^= static_cast<char>(0x5a);
  write_file_atomic(file, bytes);
  return true;
}

}  // namespace chorus::testing
