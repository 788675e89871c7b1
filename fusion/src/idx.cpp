// IDX files (LeCun's MNIST format) over bytes in memory, gzip-compressed or
// not: no torch here, so the parser is fuzzed alone (tests/fuzz/idx_fuzz.cpp).
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

namespace chorus::fusion {
namespace {

constexpr std::uint32_t kMaxItems = 10'000'000;
constexpr std::uint32_t kMaxSide = 4096;

// The file's bytes, inflated on the fly when they are gzip's: a payload is
// only ever as large as the bytes that arrived, whatever its header claims.
class IdxSource {
 public:
  IdxSource(std::string_view bytes, std::string_view origin)
      : bytes_(bytes), origin_(origin) {
    gzip_ = bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
            static_cast<unsigned char>(bytes[1]) == 0x8b;
    if (gzip_) {
      stream_.next_in =
          reinterpret_cast<Bytef*>(const_cast<char*>(bytes_.data()));
      stream_.avail_in = static_cast<uInt>(
          std::min<std::size_t>(bytes_.size(), std::size_t{1} << 30));
      // 16 + MAX_WBITS: a gzip header and trailer (its CRC-32 is checked).
      if (inflateInit2(&stream_, 16 + MAX_WBITS) != Z_OK) {
        fail(Code::kInternal, "'{}': zlib could not start", origin_);
      }
    }
  }
  ~IdxSource() {
    if (gzip_) inflateEnd(&stream_);
  }
  IdxSource(const IdxSource&) = delete;
  IdxSource& operator=(const IdxSource&) = delete;

  // Up to `n` bytes into `out`; fewer only at the end of the data.
  std::size_t read(unsigned char* out, std::size_t n, const char* what) {
    if (!gzip_) {
      const std::size_t got = std::min(n, bytes_.size() - offset_);
      if (got > 0) std::memcpy(out, bytes_.data() + offset_, got);
      offset_ += got;
      return got;
    }
    std::size_t done = 0;
    while (done < n && !ended_) {
      stream_.next_out = out + done;
      stream_.avail_out = static_cast<uInt>(
          std::min<std::size_t>(n - done, std::size_t{1} << 30));
      const uInt before = stream_.avail_out;
      int rc = inflate(&stream_, Z_NO_FLUSH);
      done += before - stream_.avail_out;
      if (rc == Z_STREAM_END) {
        ended_ = true;
      } else if (rc == Z_BUF_ERROR && stream_.avail_in == 0) {
        fail(Code::kDataLoss,
             "'{}': truncated: the compressed data ends while reading {}",
             origin_, what);
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        fail(Code::kDataLoss,
             "'{}': corrupt compressed data while reading {}: {}", origin_,
             what, stream_.msg != nullptr ? stream_.msg : zError(rc));
      }
    }
    return done;
  }

  void read_exact(unsigned char* out, std::size_t n, const char* what) {
    if (read(out, n, what) != n) {
      fail(Code::kDataLoss, "'{}': truncated: file ends while reading {}",
           origin_, what);
    }
  }

  std::uint32_t read_u32(const char* what) {
    std::array<unsigned char, 4> b{};
    read_exact(b.data(), b.size(), what);
    return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) |
           (std::uint32_t{b[2]} << 8) | std::uint32_t{b[3]};
  }

  void expect_end() {
    unsigned char extra = 0;
    if (read(&extra, 1, "the end of the file") != 0) {
      fail(Code::kDataLoss, "'{}': trailing bytes after the declared payload",
           origin_);
    }
  }

 private:
  std::string_view bytes_;
  std::string_view origin_;
  bool gzip_ = false;
  bool ended_ = false;
  std::size_t offset_ = 0;
  z_stream stream_{};
};

}  // namespace

IdxArray parse_idx(std::string_view bytes, IdxKind kind,
                   std::string_view origin) {
  IdxSource in(bytes, origin);
  const bool images = kind == IdxKind::kImages;
  const std::uint32_t expected = images ? 0x00000803 : 0x00000801;
  const std::uint32_t magic = in.read_u32("the magic number");
  if (magic != expected) {
    fail(Code::kDataLoss,
         "'{}': bad magic number 0x{:08x}, expected 0x{:08x} ({})", origin,
         magic, expected,
         images ? "IDX images: unsigned bytes, 3 dimensions"
                : "IDX labels: unsigned bytes, 1 dimension");
  }
  auto dim = [&](const char* what, std::uint32_t max) {
    const std::uint32_t v = in.read_u32(what);
    if (v == 0 || v > max) {
      fail(Code::kDataLoss, "'{}': implausible {} {} (accepted 1..{})", origin,
           what, v, max);
    }
    return std::int64_t{v};
  };
  IdxArray out;
  if (images) {
    out.shape = {dim("image count", kMaxItems), dim("row count", kMaxSide),
                 dim("column count", kMaxSide)};
  } else {
    out.shape = {dim("label count", kMaxItems)};
  }
  const std::size_t total = static_cast<std::size_t>(
      out.shape[0] * (images ? out.shape[1] * out.shape[2] : 1));
  const char* what = images ? "the image payload" : "the label payload";
  // Grows with the bytes read, never to a size only the header claims.
  constexpr std::size_t kChunk = std::size_t{1} << 22;
  while (out.data.size() < total) {
    const std::size_t at = out.data.size();
    const std::size_t want = std::min(kChunk, total - at);
    out.data.resize(at + want);
    in.read_exact(out.data.data() + at, want, what);
  }
  in.expect_end();
  return out;
}

}  // namespace chorus::fusion
