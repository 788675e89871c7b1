#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

/// TOML configuration files with strict keys: every key a program reads has a
/// default, `--set section.key=value` overrides any of them, and a key that
/// nothing reads is an error naming it (a typo never passes silently).
namespace chorus {

/// A parsed TOML document and the keys read from it so far. Reading a key
/// marks it known; `finish` then refuses every key that was not read.
class Config {
 public:
  /// An empty document (every key takes its default).
  Config();
  ~Config();
  Config(Config&&) noexcept;
  Config& operator=(Config&&) noexcept;

  /// Parses `path`. Throws `chorus::Error`: NOT_FOUND for a missing file,
  /// INVALID_ARGUMENT with the line and column of a syntax error.
  static Config load(const std::filesystem::path& path);
  /// Parses TOML text; `origin` names it in messages.
  static Config parse(const std::string& text, const std::string& origin);

  /// Applies an override "section.key=value": the value is read as TOML
  /// (`7`, `0.5`, `true`, `[1, 2]`, `"text"`), and as a bare string when it
  /// is not TOML. Throws `chorus::Error` (INVALID_ARGUMENT) for a malformed
  /// assignment.
  void set(const std::string& assignment);

  /// The file this was read from (empty for `parse`d text).
  const std::filesystem::path& path() const;
  /// `relative` resolved against the config file's directory (absolute
  /// paths and an empty path are returned unchanged).
  std::filesystem::path resolve(const std::filesystem::path& relative) const;

  /// Typed reads of a dotted key ("policy.max_batch"); the default when the
  /// key is absent. A value of the wrong type throws `chorus::Error`
  /// (INVALID_ARGUMENT) naming the key and the expected type.
  std::string get_string(const std::string& key, const std::string& fallback);
  std::int64_t get_int(const std::string& key, std::int64_t fallback);
  double get_double(const std::string& key, double fallback);
  bool get_bool(const std::string& key, bool fallback);
  std::optional<std::int64_t> get_optional_int(const std::string& key);
  std::optional<std::string> get_optional_string(const std::string& key);
  std::vector<std::int64_t> get_int_array(const std::string& key,
                                          std::vector<std::int64_t> fallback);
  /// A string or an array of strings (a lone string is a list of one).
  std::vector<std::string> get_string_list(const std::string& key,
                                           std::vector<std::string> fallback);
  std::vector<std::string> get_string_array(const std::string& key,
                                            std::vector<std::string> fallback);
  /// An array of numbers (integers are accepted and converted).
  std::vector<double> get_double_array(const std::string& key,
                                       std::vector<double> fallback);
  /// A table of numbers by name (`[a.costs]` with `alpha = 2`, or the
  /// inline `costs = { alpha = 2, "node.example.org" = 1 }`): name → value,
  /// integers converted; the fallback when the key is absent.
  std::map<std::string, double> get_number_table(
      const std::string& key, std::map<std::string, double> fallback);
  /// Whether the key is present.
  bool has(const std::string& key) const;

  /// Throws `chorus::Error` (INVALID_ARGUMENT) naming every key present that
  /// was never read, with the file it came from.
  void finish() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// `s` as a TOML basic string: quoted, with `"` and `\` escaped (for
/// writing resolved configs).
std::string toml_quoted(const std::string& s);

}  // namespace chorus
