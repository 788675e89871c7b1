#pragma once
// Files written with torch.save, OutputArchive or TorchScript are zip
// archives that carry a CRC-32 for every entry, which libtorch does not
// check when it reads them: a flipped byte in a checkpoint or a model file
// would be used. Every such file Chorus reads goes through here first.

#include <filesystem>
#include <string>
#include <string_view>

namespace chorus::fusion {

/// Checks that `bytes`, read from `path`, are a whole zip archive: its
/// directory is consistent and every entry matches the CRC-32 stored with
/// it. Throws `chorus::Error` (DATA_LOSS naming `path` and, for a CRC
/// mismatch, the entry).
void verify_archive(std::string_view bytes, const std::filesystem::path& path);

/// Reads `path` and verifies it (`verify_archive`). Throws `chorus::Error`
/// (NOT_FOUND, DATA_LOSS).
std::string read_verified_archive(const std::filesystem::path& path);

}  // namespace chorus::fusion
