// chorus coordinator --config coordinator.toml [--set key=value ...] [--resume]
// [--serve]
//                    [--print-config]
#include "coordinator_command.hpp"

#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "chorus/coordinator/run.hpp"
#include "chorus/core/config.hpp"

namespace chorus::app {

std::function<int()> add_coordinator_command(CLI::App& app) {
  struct Args {
    std::string config;
    std::vector<std::string> sets;
    bool resume = false;
    bool serve = false;
    bool print_config = false;
  };
  auto args = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "coordinator",
      "Run the coordinator: admit rostered nodes, run fusion rounds, broadcast "
      "the fused model (--config coordinator.toml)");
  sub->add_option("--config", args->config, "coordinator.toml")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option(
      "--set", args->sets,
      "Override one config key, e.g. --set coordinator.rounds=3 (repeatable)");
  sub->add_flag(
      "--serve", args->serve,
      "After the rounds, serve fused predictions to coordinator.operators "
      "(chorus predict --coordinator) until Ctrl-C; same as --set "
      "coordinator.serve=true");
  sub->add_flag("--print-config", args->print_config,
                "Print the resolved configuration and exit");
  sub->add_flag(
      "--resume", args->resume,
      "Continue from the checkpoints in the run directory, repeating no "
      "answered query (after a crash, or a Ctrl-C: that cancels the round, "
      "checkpoints the answers in flight and exits with status 130)");
  return [args] {
    Config config = Config::load(args->config);
    for (const auto& s : args->sets) config.set(s);
    if (args->serve) config.set("coordinator.serve=true");
    auto resolved = coordinator::read_coordinator_config(config);
    if (args->print_config) {
      fmt::print("{}", coordinator::to_toml(resolved));
      return 0;
    }
    // SIGHUP reads the file and the overrides again.
    auto reread = [args] {
      Config again = Config::load(args->config);
      for (const auto& s : args->sets) again.set(s);
      if (args->serve) again.set("coordinator.serve=true");
      return coordinator::read_coordinator_config(again);
    };
    return coordinator::run_coordinator(resolved, args->resume, reread);
  };
}

}  // namespace chorus::app
