#include "chorus/core/log.hpp"

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"

TEST_CASE("log: parse_level accepts the seven names and refuses others") {
  CHECK(chorus::log::parse_level("trace") == spdlog::level::trace);
  CHECK(chorus::log::parse_level("warn") == spdlog::level::warn);
  CHECK(chorus::log::parse_level("error") == spdlog::level::err);
  CHECK(chorus::log::parse_level("off") == spdlog::level::off);
  try {
    chorus::log::parse_level("verbose");
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kInvalidArgument);
    CHECK(std::string(e.what()).find("'verbose'") != std::string::npos);
  }
}

TEST_CASE("log: named loggers share sinks and init redirects existing ones") {
  auto a = chorus::log::get("test-a");
  CHECK(a->name() == "test-a");
  CHECK(chorus::log::get("test-a") == a);  // One instance per name.

  chorus::testing::TempDir dir;
  const auto file = dir / "chorus.log";
  chorus::log::Options options;
  options.level = spdlog::level::debug;
  options.file = file;
  chorus::log::init(options);
  auto b = chorus::log::get("test-b");
  a->debug("event=probe key={}", 1);
  b->trace("event=hidden");  // Below the configured level.
  b->info("event=probe key={}", 2);
  a->flush();
  b->flush();

  const std::string text = chorus::read_file(file);
  CHECK(text.find("[test-a] event=probe key=1") != std::string::npos);
  CHECK(text.find("[test-b] event=probe key=2") != std::string::npos);
  CHECK(text.find("hidden") == std::string::npos);

  chorus::log::init(
      chorus::log::Options{});  // Back to stderr only, so the file can go.
}
