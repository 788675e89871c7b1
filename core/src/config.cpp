#include "chorus/core/config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <set>
#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"

namespace chorus {

struct Config::Impl {
  toml::table table;
  std::filesystem::path path;
  std::string origin;
  std::set<std::string> read;
};

namespace {

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(key);
  while (std::getline(in, part, '.')) parts.push_back(part);
  return parts;
}

toml::table parse_text(const std::string& text, const std::string& origin) {
  try {
    return toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    fail(Code::kInvalidArgument, "{}:{}:{}: {}", origin, where.line,
         where.column, e.description());
  }
}

void collect_keys(const toml::table& table, const std::string& prefix,
                  std::vector<std::string>& out) {
  for (auto&& [k, v] : table) {
    std::string key = prefix.empty() ? std::string(k.str())
                                     : prefix + "." + std::string(k.str());
    if (const auto* sub = v.as_table()) {
      collect_keys(*sub, key, out);
    } else {
      out.push_back(key);
    }
  }
}

}  // namespace

Config::Config() : impl_(std::make_unique<Impl>()) {
  impl_->origin = "(defaults)";
}
Config::~Config() = default;
Config::Config(Config&&) noexcept = default;
Config& Config::operator=(Config&&) noexcept = default;

Config Config::load(const std::filesystem::path& path) {
  Config config = parse(read_file(path), path.string());
  config.impl_->path = path;
  return config;
}

Config Config::parse(const std::string& text, const std::string& origin) {
  Config config;
  config.impl_->table = parse_text(text, origin);
  config.impl_->origin = origin;
  return config;
}

void Config::set(const std::string& assignment) {
  const auto eq = assignment.find('=');
  CHORUS_CHECK(eq != std::string::npos && eq > 0,
               "--set expects section.key=value, got '{}'", assignment);
  const std::string key = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  auto parts = split_key(key);
  for (const auto& p : parts) {
    CHORUS_CHECK(!p.empty(), "--set: malformed key '{}'", key);
  }
  toml::table* table = &impl_->table;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    auto* node = table->get(parts[i]);
    if (!node) {
      table->insert(parts[i], toml::table{});
      node = table->get(parts[i]);
    }
    CHORUS_CHECK(node->is_table(), "--set {}: '{}' is not a section", key,
                 parts[i]);
    table = node->as_table();
  }
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    parsed.insert("v", value);  // A bare word is a string.
  }
  table->insert_or_assign(parts.back(), *parsed.get("v"));
}

const std::filesystem::path& Config::path() const { return impl_->path; }

std::filesystem::path Config::resolve(
    const std::filesystem::path& relative) const {
  if (relative.empty() || relative.is_absolute() || impl_->path.empty()) {
    return relative;
  }
  return impl_->path.parent_path() / relative;
}

namespace {

const toml::node* find(const toml::table& table, const std::string& key) {
  const toml::table* t = &table;
  auto parts = split_key(key);
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const toml::node* n = t->get(parts[i]);
    if (!n) return nullptr;
    if (i + 1 == parts.size()) return n;
    t = n->as_table();
    if (!t) return nullptr;
  }
  return nullptr;
}

[[noreturn]] void wrong_type(const std::string& origin, const std::string& key,
                             const char* expected) {
  fail(Code::kInvalidArgument, "{}: config key '{}' must be {}", origin, key,
       expected);
}

}  // namespace

bool Config::has(const std::string& key) const {
  return find(impl_->table, key) != nullptr;
}

std::string Config::get_string(const std::string& key,
                               const std::string& fallback) {
  return get_optional_string(key).value_or(fallback);
}

std::optional<std::string> Config::get_optional_string(const std::string& key) {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (!n) return std::nullopt;
  if (!n->is_string()) wrong_type(impl_->origin, key, "a string");
  return std::string(*n->value<std::string_view>());
}

std::optional<std::int64_t> Config::get_optional_int(const std::string& key) {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (!n) return std::nullopt;
  if (!n->is_integer()) wrong_type(impl_->origin, key, "an integer");
  return *n->value<std::int64_t>();
}

std::int64_t Config::get_int(const std::string& key, std::int64_t fallback) {
  return get_optional_int(key).value_or(fallback);
}

double Config::get_double(const std::string& key, double fallback) {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (!n) return fallback;
  if (!n->is_number()) wrong_type(impl_->origin, key, "a number");
  return *n->value<double>();
}

bool Config::get_bool(const std::string& key, bool fallback) {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (!n) return fallback;
  if (!n->is_boolean()) wrong_type(impl_->origin, key, "true or false");
  return *n->value<bool>();
}

namespace {

// An array of T at `key`: each element must pass `is_t`.
template <typename T, typename Is>
std::vector<T> read_array(const toml::table& table, const std::string& origin,
                          const std::string& key, std::vector<T> fallback,
                          Is is_t, const char* what) {
  const auto* n = find(table, key);
  if (!n) return fallback;
  const auto* a = n->as_array();
  if (!a) wrong_type(origin, key, what);
  std::vector<T> out;
  for (const auto& e : *a) {
    if (!is_t(e)) wrong_type(origin, key, what);
    out.emplace_back(*e.template value<T>());
  }
  return out;
}

}  // namespace

std::vector<std::int64_t> Config::get_int_array(
    const std::string& key, std::vector<std::int64_t> fallback) {
  impl_->read.insert(key);
  return read_array<std::int64_t>(
      impl_->table, impl_->origin, key, std::move(fallback),
      [](const toml::node& e) { return e.is_integer(); },
      "an array of integers");
}

std::vector<std::string> Config::get_string_array(
    const std::string& key, std::vector<std::string> fallback) {
  impl_->read.insert(key);
  return read_array<std::string>(
      impl_->table, impl_->origin, key, std::move(fallback),
      [](const toml::node& e) { return e.is_string(); }, "an array of strings");
}

std::vector<std::string> Config::get_string_list(
    const std::string& key, std::vector<std::string> fallback) {
  const auto* n = find(impl_->table, key);
  if (n && n->is_string()) {
    impl_->read.insert(key);
    return {std::string(*n->value<std::string_view>())};
  }
  impl_->read.insert(key);
  return read_array<std::string>(
      impl_->table, impl_->origin, key, std::move(fallback),
      [](const toml::node& e) { return e.is_string(); },
      "a string or an array of strings");
}

std::vector<double> Config::get_double_array(const std::string& key,
                                             std::vector<double> fallback) {
  impl_->read.insert(key);
  return read_array<double>(
      impl_->table, impl_->origin, key, std::move(fallback),
      [](const toml::node& e) { return e.is_number(); }, "an array of numbers");
}

std::map<std::string, double> Config::get_number_table(
    const std::string& key, std::map<std::string, double> fallback) {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (!n) return fallback;
  const auto* t = n->as_table();
  if (!t) wrong_type(impl_->origin, key, "a table of numbers (name = number)");
  std::map<std::string, double> out;
  for (auto&& [name, value] : *t) {
    // `finish` knows a table's entries by their dotted keys.
    const auto entry = key + "." + std::string(name.str());
    impl_->read.insert(entry);
    if (!value.is_number()) wrong_type(impl_->origin, entry, "a number");
    out.emplace(std::string(name.str()), *value.value<double>());
  }
  return out;
}

void Config::finish() const {
  std::vector<std::string> keys;
  collect_keys(impl_->table, "", keys);
  std::vector<std::string> unknown;
  for (const auto& k : keys) {
    if (!impl_->read.count(k)) unknown.push_back(k);
  }
  if (unknown.empty()) return;
  fail(Code::kInvalidArgument, "{}: unknown config key{} '{}'", impl_->origin,
       unknown.size() > 1 ? "s" : "", fmt::join(unknown, "', '"));
}

std::string toml_quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

}  // namespace chorus
