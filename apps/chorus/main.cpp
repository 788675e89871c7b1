// The `chorus` command: subcommands only; the work lives in the libraries.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "audit_command.hpp"
#include "certs_command.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/memory.hpp"
#include "chorus/core/version.hpp"
#include "coordinator_command.hpp"
#include "eval_command.hpp"
#include "node_command.hpp"
#include "predict_command.hpp"
#include "report_command.hpp"
#include "simulate_command.hpp"
#include "status_command.hpp"

namespace {

// Exit codes of the chorus command, also listed in `chorus --help`.
constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

struct Command {
  CLI::App* app;
  std::function<int()> run;
};

}  // namespace

int main(int argc, char** argv) {
  chorus::tune_allocator();
  CLI::App app{
      "chorus: collective learning from black-box experts.\n"
      "Nodes keep their data and models at home and answer prediction\n"
      "queries over mutual TLS; a coordinator fuses their answers.",
      "chorus"};
  app.set_version_flag("--version", fmt::format("chorus {}", chorus::kVersion),
                       "Print the version and exit");
  app.require_subcommand(0, 1);
  app.footer(
      "Run 'chorus SUBCOMMAND --help' for a subcommand's options.\n"
      "On a terminal, long work draws live progress bars on stderr "
      "(CHORUS_PROGRESS=0 turns them off); on a pipe or a file only the "
      "plain lines are written.\n"
      "Exit status: 0 success, 1 error, 2 usage error, 130 interrupted "
      "(Ctrl-C).\n"
      "Documentation: README.md and examples/ in the source tree.");

  std::string log_level;
  const char* env_level = std::getenv("CHORUS_LOG_LEVEL");
  app.add_option("--log-level", log_level,
                 "trace, debug, info, warn, error, critical or off (default: "
                 "$CHORUS_LOG_LEVEL, else warn for simulate, whose progress "
                 "lines say what happens, and info for the rest)");

  std::vector<Command> commands;
  {
    auto run = chorus::app::add_simulate_command(app, argv[0]);
    commands.push_back({app.get_subcommand("simulate"), std::move(run)});
  }
  {
    auto run = chorus::app::add_coordinator_command(app);
    commands.push_back({app.get_subcommand("coordinator"), std::move(run)});
  }
  for (auto& [sub, run] : chorus::app::add_node_commands(app)) {
    commands.push_back({sub, std::move(run)});
  }

  for (auto& [sub, run] : chorus::app::add_certs_commands(app)) {
    commands.push_back({sub, std::move(run)});
  }

  {
    auto run = chorus::app::add_predict_command(app);
    commands.push_back({app.get_subcommand("predict"), std::move(run)});
  }
  {
    auto run = chorus::app::add_eval_command(app);
    commands.push_back({app.get_subcommand("eval"), std::move(run)});
  }
  {
    auto run = chorus::app::add_status_command(app);
    commands.push_back({app.get_subcommand("status"), std::move(run)});
  }
  {
    auto run = chorus::app::add_report_command(app);
    commands.push_back({app.get_subcommand("report"), std::move(run)});
  }
  {
    auto run = chorus::app::add_audit_command(app);
    commands.push_back({app.get_subcommand("audit"), std::move(run)});
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }

  try {
    if (log_level.empty() && env_level && *env_level) log_level = env_level;
    if (log_level.empty()) {
      log_level = app.get_subcommand("simulate")->parsed() ? "warn" : "info";
    }
    chorus::log::Options log_options;
    log_options.level = chorus::log::parse_level(log_level);
    chorus::log::init(log_options);
    for (const Command& command : commands) {
      if (command.app->parsed()) return command.run();
    }
    fmt::print("{}", app.help());
    return kExitUsage;
  } catch (const chorus::Error& e) {
    fmt::print(stderr, "chorus: error: {}\n", chorus::describe(e));
    return kExitError;
  } catch (const std::exception& e) {
    fmt::print(stderr, "chorus: error: {}\n", e.what());
    return kExitError;
  }
  return kExitOk;
}
