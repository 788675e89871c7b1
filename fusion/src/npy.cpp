// The NumPy .npy format (numpy/lib/format.py): magic "\x93NUMPY", a version
// (1.0: u16 header length; 2.0/3.0: u32), an ASCII (3.0: UTF-8) Python dict
// literal padded with spaces and a newline, then the raw elements.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <charconv>
#include <limits>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

namespace chorus::fusion {
namespace {

constexpr std::string_view kMagic = "\x93NUMPY";
constexpr std::size_t kMaxHeader = 1 << 16;

// A cursor over the header dict literal.
class DictParser {
 public:
  DictParser(std::string_view text, std::string_view origin)
      : s_(text), origin_(origin) {}

  void skip_space() {
    while (pos_ < s_.size() &&
           std::isspace(static_cast<unsigned char>(s_[pos_])))
      ++pos_;
  }
  bool eat(char c) {
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) error(fmt::format("expected '{}'", c));
  }
  std::string string_literal() {
    skip_space();
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) {
      error("expected a quoted string");
    }
    const char quote = s_[pos_++];
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != quote) {
      if (s_[pos_] == '\\') error("escapes are not expected in an .npy header");
      out.push_back(s_[pos_++]);
    }
    if (pos_ >= s_.size()) error("unterminated string");
    ++pos_;
    return out;
  }
  bool boolean() {
    skip_space();
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    error("expected True or False");
  }
  std::vector<std::int64_t> shape_tuple() {
    expect('(');
    std::vector<std::int64_t> shape;
    while (!eat(')')) {
      skip_space();
      std::int64_t v = 0;
      auto [end, ec] =
          std::from_chars(s_.data() + pos_, s_.data() + s_.size(), v);
      if (ec != std::errc() || v < 0)
        error("expected a non-negative dimension");
      pos_ = static_cast<std::size_t>(end - s_.data());
      shape.push_back(v);
      if (shape.size() > 32) error("more than 32 dimensions");
      skip_space();
      if (!eat(',')) {
        expect(')');
        break;
      }
    }
    return shape;
  }
  bool at_end() {
    skip_space();
    return pos_ == s_.size();
  }
  [[noreturn]] void error(const std::string& what) const {
    fail(Code::kDataLoss,
         "'{}': malformed .npy header at byte {} of the dict: {}", origin_,
         pos_, what);
  }

 private:
  std::string_view s_;
  std::string_view origin_;
  std::size_t pos_ = 0;
};

}  // namespace

std::int64_t NpyArray::elements() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string NpyArray::descr() const {
  return fmt::format("{}{}{}", item_size == 1 ? '|' : '<', kind, item_size);
}

NpyArray parse_npy(std::string_view bytes, std::string_view origin,
                   std::int64_t max_elements) {
  if (bytes.size() < kMagic.size() + 2 ||
      bytes.substr(0, kMagic.size()) != kMagic) {
    fail(Code::kDataLoss, "'{}' is not a NumPy .npy file (no \\x93NUMPY magic)",
         origin);
  }
  const auto major = static_cast<unsigned char>(bytes[6]);
  const auto minor = static_cast<unsigned char>(bytes[7]);
  std::size_t header_len = 0, offset = 0;
  auto byte = [&](std::size_t i) {
    return static_cast<std::size_t>(static_cast<unsigned char>(bytes[i]));
  };
  if (major == 1 && minor == 0) {
    if (bytes.size() < 10)
      fail(Code::kDataLoss, "'{}': truncated .npy header", origin);
    header_len = byte(8) | (byte(9) << 8);
    offset = 10;
  } else if ((major == 2 || major == 3) && minor == 0) {
    if (bytes.size() < 12)
      fail(Code::kDataLoss, "'{}': truncated .npy header", origin);
    header_len = byte(8) | (byte(9) << 8) | (byte(10) << 16) | (byte(11) << 24);
    offset = 12;
  } else {
    fail(Code::kDataLoss,
         "'{}': unsupported .npy format version {}.{} (1.0-3.0 are read)",
         origin, major, minor);
  }
  if (header_len > kMaxHeader || header_len > bytes.size() - offset) {
    fail(Code::kDataLoss,
         "'{}': truncated .npy file: the header declares {} bytes, {} follow",
         origin, header_len, bytes.size() - offset);
  }
  DictParser p(bytes.substr(offset, header_len), origin);
  NpyArray a;
  bool have_descr = false, have_order = false, have_shape = false;
  std::string descr;
  p.expect('{');
  while (!p.eat('}')) {
    const auto key = p.string_literal();
    p.expect(':');
    if (key == "descr") {
      descr = p.string_literal();
      have_descr = true;
    } else if (key == "fortran_order") {
      a.fortran_order = p.boolean();
      have_order = true;
    } else if (key == "shape") {
      a.shape = p.shape_tuple();
      have_shape = true;
    } else {
      p.error(fmt::format("unexpected key '{}'", key));
    }
    if (!p.eat(',')) {
      p.expect('}');
      break;
    }
  }
  if (!p.at_end()) p.error("text after the dict");
  if (!have_descr || !have_order || !have_shape) {
    p.error("the dict needs 'descr', 'fortran_order' and 'shape'");
  }
  // descr: byte order, kind, size, e.g. "<f4", "|u1".
  if (descr.size() < 3) {
    fail(Code::kDataLoss, "'{}': unsupported .npy dtype '{}'", origin, descr);
  }
  const char order = descr[0];
  a.kind = descr[1];
  int size = 0;
  auto [end, ec] =
      std::from_chars(descr.data() + 2, descr.data() + descr.size(), size);
  const bool whole = ec == std::errc() && end == descr.data() + descr.size();
  const bool known_kind =
      a.kind == 'f' || a.kind == 'i' || a.kind == 'u' || a.kind == 'b';
  const bool known_size =
      a.kind == 'f'   ? (size == 4 || size == 8)
      : a.kind == 'b' ? size == 1
                      : (size == 1 || size == 2 || size == 4 || size == 8);
  if (!whole || !known_kind || !known_size) {
    fail(Code::kDataLoss,
         "'{}': unsupported .npy dtype '{}' (bool, int, uint and float32/64 "
         "arrays are "
         "read)",
         origin, descr);
  }
  if (order == '>' && size > 1) {
    fail(Code::kDataLoss,
         "'{}': big-endian .npy dtype '{}'; save it little-endian "
         "(array.astype(array.dtype.newbyteorder('<')))",
         origin, descr);
  }
  if (order != '<' && order != '|' && order != '=' && order != '>') {
    fail(Code::kDataLoss, "'{}': unsupported .npy byte order in '{}'", origin,
         descr);
  }
  a.item_size = size;
  std::int64_t n = 1;
  for (auto d : a.shape) {
    if (d != 0 && n > max_elements / d) {
      fail(Code::kDataLoss, "'{}': .npy shape ({}) has more than {} elements",
           origin, fmt::join(a.shape, ", "), max_elements);
    }
    n *= d;
  }
  if (n > max_elements) {
    fail(Code::kDataLoss, "'{}': .npy shape ({}) has more than {} elements",
         origin, fmt::join(a.shape, ", "), max_elements);
  }
  const auto payload = bytes.substr(offset + header_len);
  const auto want =
      static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(size);
  if (payload.size() != want) {
    fail(Code::kDataLoss,
         "'{}': .npy payload is {} bytes, but shape ({}) of '{}' needs {}{}",
         origin, payload.size(), fmt::join(a.shape, ", "), descr, want,
         payload.size() < want ? " (truncated file)" : "");
  }
  a.data = payload;
  return a;
}

}  // namespace chorus::fusion
