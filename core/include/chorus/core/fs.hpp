#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace chorus {

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory is written, fsync'ed, given `mode`, and renamed over `path`;
/// then the directory is fsync'ed. Readers see the old file or the new one,
/// never a torn one. Throws `chorus::Error` (NOT_FOUND when the directory is
/// missing, INTERNAL for other I/O failures) and leaves no temporary behind.
void write_file_atomic(
    const std::filesystem::path& path, std::string_view bytes,
    std::filesystem::perms mode = std::filesystem::perms::owner_read |
                                  std::filesystem::perms::owner_write |
                                  std::filesystem::perms::group_read |
                                  std::filesystem::perms::others_read);

/// Reads a whole file. Throws `chorus::Error` (NOT_FOUND, INTERNAL).
std::string read_file(const std::filesystem::path& path);

/// `configured` when it is not empty, else the path in the environment
/// variable `variable` (when one is named, set and not empty), else nothing.
/// The environment is read at the applications' edges only (command lines,
/// configs, benches): libraries take the paths they are given.
std::optional<std::filesystem::path> path_or_env(
    const std::filesystem::path& configured, const char* variable);

}  // namespace chorus
