#pragma once
// HOST:PORT as the commands take it (--coordinator).

#include <cstdint>
#include <string>
#include <utility>

#include "chorus/core/error.hpp"

namespace chorus::app {

/// Splits "HOST:PORT" ("[v6]:PORT" too); throws INVALID_ARGUMENT naming
/// `option` otherwise.
inline std::pair<std::string, std::uint16_t> parse_host_port(
    const std::string& text, const char* option) {
  const auto colon = text.rfind(':');
  CHORUS_CHECK(colon != std::string::npos && colon > 0,
               "{} must be HOST:PORT, got '{}'", option, text);
  auto host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    std::size_t used = 0;
    port = std::stoi(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1) port = -1;
  } catch (const std::exception&) {
    port = -1;
  }
  CHORUS_CHECK(port > 0 && port < 65536, "{}: bad port in '{}'", option, text);
  return {host, static_cast<std::uint16_t>(port)};
}

}  // namespace chorus::app
