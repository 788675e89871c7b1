// chorus report RUN_DIR [--out FILE]
#include "report_command.hpp"

#include <fmt/format.h>

#include <memory>
#include <string>

#include "chorus/simulate/html_report.hpp"

namespace chorus::app {

std::function<int()> add_report_command(CLI::App& app) {
  struct Args {
    std::string run_dir, out;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "report",
      "Write one self-contained HTML page (inline SVG charts, no script, no "
      "network) of a run directory of 'chorus simulate' or 'chorus "
      "coordinator': the results table, accuracy against what the expert "
      "queries cost, the confusion matrix, per-round time and traffic, and "
      "per node the inputs answered, bytes, latency percentiles, refusals and "
      "budget. "
      "'chorus simulate' writes it at the end of every run.");
  cmd->add_option("RUN_DIR", args->run_dir,
                  "The run directory (its report.json and metrics.jsonl)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--out", args->out,
                  "Where to write the page (default: RUN_DIR/report.html)");
  return [args] {
    const auto path = simulate::write_html_report(args->run_dir, args->out);
    fmt::print("wrote {}\n", path.string());
    return 0;
  };
}

}  // namespace chorus::app
