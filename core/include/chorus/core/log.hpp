#pragma once

#include <spdlog/logger.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>

/// Logging: one named spdlog logger per subsystem ("node", "coordinator",
/// "protocol", "fusion", ...), all writing to the same sinks. Messages are
/// key=value: `log->info("round={} node={} event=predict n={}", ...)`.
namespace chorus::log {

/// How `init` configures the process's logging.
struct Options {
  /// Minimum level written.
  spdlog::level::level_enum level = spdlog::level::info;
  /// Also append to this file (created if missing) when set.
  std::optional<std::filesystem::path> file;
  /// Colour the level on a terminal (ignored when stderr is not a terminal).
  bool color = true;
};

/// (Re)configures every logger, existing and future: sinks to stderr (and
/// `options.file`), pattern, level. Safe to call again, e.g. after parsing
/// flags; call it before starting threads that log.
void init(const Options& options);

/// The logger named `name`, created on first use with the configured sinks.
/// Thread-safe; cheap to call, but hot paths should keep the pointer.
std::shared_ptr<spdlog::logger> get(std::string_view name);

/// Parses "trace", "debug", "info", "warn", "error", "critical" or "off".
/// Throws `chorus::Error` (INVALID_ARGUMENT) naming the accepted values.
spdlog::level::level_enum parse_level(std::string_view text);

}  // namespace chorus::log
