// CSV with a header row (RFC 4180), features as numbers, one label column.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "chorus/core/error.hpp"
#include "chorus/fusion/formats.hpp"

namespace chorus::fusion {
namespace {

// Splits the text into records of fields; tracks the line each record
// starts on for messages.
class CsvReader {
 public:
  CsvReader(std::string_view text, char delimiter, std::string_view origin)
      : s_(text), delimiter_(delimiter), origin_(origin) {
    if (s_.substr(0, 3) == "\xEF\xBB\xBF")
      pos_ = 3;  // A UTF-8 byte order mark.
  }

  // The next record; false at the end of the text. Blank lines are skipped.
  bool next(std::vector<std::string>& fields, std::size_t& line) {
    fields.clear();
    while (pos_ < s_.size() && (s_[pos_] == '\n' || s_[pos_] == '\r')) {
      if (s_[pos_] == '\n') ++line_;
      ++pos_;
    }
    if (pos_ >= s_.size()) return false;
    line = line_;
    std::string field;
    bool quoted = false, was_quoted = false;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (quoted) {
        if (c == '"') {
          if (pos_ + 1 < s_.size() && s_[pos_ + 1] == '"') {
            field.push_back('"');
            pos_ += 2;
            continue;
          }
          quoted = false;
          ++pos_;
          continue;
        }
        if (c == '\n') ++line_;
        field.push_back(c);
        ++pos_;
        continue;
      }
      if (c == '"') {
        if (!field.empty() || was_quoted) {
          fail(Code::kDataLoss,
               "'{}': line {}: a quote inside an unquoted field", origin_,
               line_);
        }
        quoted = was_quoted = true;
        ++pos_;
        continue;
      }
      if (c == delimiter_) {
        fields.push_back(std::move(field));
        field.clear();
        was_quoted = false;
        ++pos_;
        continue;
      }
      if (c == '\r' || c == '\n') break;
      if (was_quoted) {
        fail(Code::kDataLoss, "'{}': line {}: text after a closing quote",
             origin_, line_);
      }
      field.push_back(c);
      ++pos_;
    }
    if (quoted) {
      fail(Code::kDataLoss,
           "'{}': line {}: a quoted field is not closed before the end",
           origin_, line);
    }
    fields.push_back(std::move(field));
    return true;
  }

 private:
  std::string_view s_;
  char delimiter_;
  std::string_view origin_;
  std::size_t pos_ = 0;
  std::size_t line_ = 1;
};

std::string_view trim(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
    v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
    v.remove_suffix(1);
  return v;
}

}  // namespace

CsvTable parse_csv(std::string_view text, const CsvOptions& options,
                   std::string_view origin) {
  CsvReader reader(text, options.delimiter, origin);
  std::vector<std::string> header, fields;
  std::size_t line = 0;
  if (!reader.next(header, line)) {
    fail(Code::kDataLoss, "'{}' is empty: a CSV file needs a header row",
         origin);
  }
  std::ptrdiff_t label_at = -1;
  for (std::size_t i = 0; i < header.size(); ++i) {
    header[i] = std::string(trim(header[i]));
    if (header[i].empty()) {
      fail(Code::kDataLoss, "'{}': line {}: header column {} has no name",
           origin, line, i + 1);
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (header[j] == header[i]) {
        fail(Code::kDataLoss, "'{}': line {}: header names column '{}' twice",
             origin, line, header[i]);
      }
    }
    if (!options.label_column.empty() && header[i] == options.label_column) {
      label_at = static_cast<std::ptrdiff_t>(i);
    }
  }
  if (!options.label_column.empty() && label_at < 0 &&
      !options.label_optional) {
    fail(Code::kInvalidArgument,
         "'{}': no label column named '{}' (the columns are: {})", origin,
         options.label_column, fmt::join(header, ", "));
  }
  CsvTable t;
  for (std::size_t i = 0; i < header.size(); ++i) {
    if (static_cast<std::ptrdiff_t>(i) != label_at)
      t.feature_names.push_back(header[i]);
  }
  t.cols = static_cast<std::int64_t>(t.feature_names.size());
  if (t.cols == 0) {
    fail(Code::kInvalidArgument,
         "'{}': no feature columns besides the label column '{}'", origin,
         options.label_column);
  }
  while (reader.next(fields, line)) {
    if (fields.size() != header.size()) {
      fail(Code::kDataLoss, "'{}': line {} has {} fields, the header has {}",
           origin, line, fields.size(), header.size());
    }
    if (t.rows >= options.max_rows) {
      fail(Code::kDataLoss, "'{}': more than {} rows", origin,
           options.max_rows);
    }
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (static_cast<std::ptrdiff_t>(i) == label_at) {
        t.labels.emplace_back(trim(fields[i]));
        continue;
      }
      const auto cell = trim(fields[i]);
      // strtof accepts what people write (1e-3, .5, +2); from_chars for
      // float is not in every libstdc++ we build with.
      std::string z(cell);
      char* end = nullptr;
      errno = 0;
      const float v = z.empty() ? 0.f : std::strtof(z.c_str(), &end);
      if (z.empty() || end != z.c_str() + z.size()) {
        fail(Code::kInvalidArgument,
             "'{}': line {}, column '{}': '{}' is not a number", origin, line,
             header[i], cell);
      }
      if (!std::isfinite(v) || errno == ERANGE) {
        fail(Code::kInvalidArgument,
             "'{}': line {}, column '{}': '{}' is not a finite float32 value",
             origin, line, header[i], cell);
      }
      t.features.push_back(v);
    }
    ++t.rows;
  }
  if (t.rows == 0)
    fail(Code::kDataLoss, "'{}' has a header but no data rows", origin);
  return t;
}

}  // namespace chorus::fusion
