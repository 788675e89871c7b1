#include "chorus/fusion/archive.hpp"

#include <zip.h>

#include <memory>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"

namespace chorus::fusion {

void verify_archive(std::string_view bytes, const std::filesystem::path& path) {
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* src =
      zip_source_buffer_create(bytes.data(), bytes.size(), 0, &error);
  if (src == nullptr) {
    std::string why = zip_error_strerror(&error);
    zip_error_fini(&error);
    fail(Code::kInternal, "'{}': {}", path.string(), why);
  }
  zip_t* archive =
      zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &error);
  if (archive == nullptr) {
    zip_source_free(src);
    std::string why = zip_error_strerror(&error);
    zip_error_fini(&error);
    fail(Code::kDataLoss,
         "'{}' is corrupt: not a whole zip archive ({}); it was truncated or "
         "altered after it was written",
         path.string(), why);
  }
  zip_error_fini(&error);
  std::unique_ptr<zip_t, decltype(&zip_discard)> guard(archive, &zip_discard);
  std::vector<char> buffer(1 << 16);
  const auto n = zip_get_num_entries(archive, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    const auto index = static_cast<zip_uint64_t>(i);
    const char* name = zip_get_name(archive, index, 0);
    const std::string entry = name ? name : "#" + std::to_string(i);
    zip_file_t* f = zip_fopen_index(archive, index, 0);
    if (f == nullptr) {
      fail(Code::kDataLoss, "'{}' is corrupt: entry '{}' cannot be read ({})",
           path.string(), entry, zip_strerror(archive));
    }
    // Read to the end: libzip compares the CRC-32 once the entry is read
    // whole.
    zip_int64_t got = 0;
    do {
      got = zip_fread(f, buffer.data(), buffer.size());
    } while (got > 0);
    std::string why = got < 0 ? zip_file_strerror(f) : "";
    zip_fclose(f);
    if (got < 0) {
      fail(Code::kDataLoss,
           "'{}' is corrupt: entry '{}' does not match its checksum ({}); it "
           "was altered after it was written",
           path.string(), entry, why);
    }
  }
}

std::string read_verified_archive(const std::filesystem::path& path) {
  auto bytes = read_file(path);
  verify_archive(bytes, path);
  return bytes;
}

}  // namespace chorus::fusion
