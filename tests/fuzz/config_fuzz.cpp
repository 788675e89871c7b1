// Fuzz entry point of the TOML configuration (core/src/config.cpp over
// toml++, and the [task] table of core/src/task.cpp): any text must either
// be read — typed getters, arrays, the task, unknown keys refused by
// finish() — or be refused with chorus::Error naming the key or the
// position; never crash or hang. Built with libFuzzer by
// tests/fuzz/CMakeLists.txt (clang), replayed over tests/fuzz/corpus/config
// by ctest (g++).
#include <cstddef>
#include <cstdint>
#include <string>

#include "chorus/core/config.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/task.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto config = chorus::Config::parse(text, "fuzz.toml");
    auto attempt = [](auto&& f) {
      try {
        f();
      } catch (const chorus::Error&) {
        // A key of the wrong type, refused by name.
      }
    };
    // Keys of every type, as the coordinator and node read them.
    attempt([&] { (void)config.get_string("coordinator.name", "c"); });
    attempt([&] { (void)config.get_int("coordinator.port", 7); });
    attempt([&] { (void)config.get_double("coordinator.settle_s", 1.0); });
    attempt([&] { (void)config.get_bool("coordinator.serve", false); });
    attempt([&] { (void)config.get_string_array("coordinator.roster", {}); });
    attempt([&] { (void)config.get_int_array("expert.input_shape", {}); });
    attempt([&] { (void)config.get_double_array("task.mean", {}); });
    attempt([&] { (void)config.get_optional_int("budget.total_budget"); });
    attempt([&] { (void)config.get_optional_string("data.transfer"); });
    // The task table, unless it names a file (the fuzzer must not read
    // the machine's files).
    bool file = false;
    attempt(
        [&] { file = config.get_optional_string("task.file").has_value(); });
    if (!file) {
      attempt([&] {
        (void)chorus::read_task(config, chorus::fashion_mnist_task());
      });
    }
    attempt([&] { config.finish(); });
  } catch (const chorus::Error&) {
    // Not TOML: refused with the position.
  }
  return 0;
}
