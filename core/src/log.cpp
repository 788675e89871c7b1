#include "chorus/core/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/core/progress.hpp"

namespace chorus::log {
namespace {

constexpr const char* kPattern = "%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ [%n] %v";

struct State {
  std::mutex mutex;
  std::vector<spdlog::sink_ptr> sinks;
  spdlog::level::level_enum level = spdlog::level::info;
};

State& state() {
  static State s;
  return s;
}

// The console sink while progress bars are drawn: the colour sink writes
// each line to stderr itself, with the bars erased around it.
class AboveBarsSink final : public spdlog::sinks::sink {
 public:
  explicit AboveBarsSink(spdlog::sink_ptr inner) : inner_(std::move(inner)) {}
  void log(const spdlog::details::log_msg& msg) override {
    progress::around([&] {
      inner_->log(msg);
      inner_->flush();
    });
  }
  void flush() override { inner_->flush(); }
  void set_pattern(const std::string& pattern) override {
    inner_->set_pattern(pattern);
  }
  void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override {
    inner_->set_formatter(std::move(formatter));
  }

 private:
  spdlog::sink_ptr inner_;
};

std::vector<spdlog::sink_ptr> make_sinks(const Options& options) {
  std::vector<spdlog::sink_ptr> sinks;
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>(
      options.color && ::isatty(STDERR_FILENO) ? spdlog::color_mode::automatic
                                               : spdlog::color_mode::never);
  if (progress::enabled()) {
    sinks.push_back(std::make_shared<AboveBarsSink>(std::move(console)));
  } else {
    sinks.push_back(std::move(console));
  }
  if (options.file) {
    sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(
        options.file->string(), /*truncate=*/false));
  }
  for (auto& sink : sinks) sink->set_pattern(kPattern);
  return sinks;
}

// Caller holds state().mutex.
void ensure_sinks_locked(State& s) {
  if (s.sinks.empty()) s.sinks = make_sinks(Options{});
}

}  // namespace

void init(const Options& options) {
  auto& s = state();
  std::lock_guard lock(s.mutex);
  s.sinks = make_sinks(options);
  s.level = options.level;
  spdlog::apply_all([&](const std::shared_ptr<spdlog::logger>& logger) {
    logger->sinks() = s.sinks;
    logger->set_level(s.level);
  });
  spdlog::set_level(s.level);
}

std::shared_ptr<spdlog::logger> get(std::string_view name) {
  std::string key(name);
  if (auto existing = spdlog::get(key)) return existing;
  auto& s = state();
  std::lock_guard lock(s.mutex);
  if (auto existing = spdlog::get(key)) return existing;
  ensure_sinks_locked(s);
  auto logger =
      std::make_shared<spdlog::logger>(key, s.sinks.begin(), s.sinks.end());
  logger->set_level(s.level);
  logger->flush_on(spdlog::level::warn);
  spdlog::register_logger(logger);
  return logger;
}

spdlog::level::level_enum parse_level(std::string_view text) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum>
      kLevels[] = {{"trace", spdlog::level::trace},
                   {"debug", spdlog::level::debug},
                   {"info", spdlog::level::info},
                   {"warn", spdlog::level::warn},
                   {"error", spdlog::level::err},
                   {"critical", spdlog::level::critical},
                   {"off", spdlog::level::off}};
  for (const auto& [name, level] : kLevels) {
    if (text == name) return level;
  }
  fail(Code::kInvalidArgument,
       "unknown log level '{}' (expected trace, debug, info, warn, error, "
       "critical or off)",
       text);
}

}  // namespace chorus::log
