// chorus simulate [--experts N] [--algorithm NAME[,NAME...]] [--dataset NAME]
//                 [--rounds N] [--seed N] [--out DIR] [--processes] ...
#include "simulate_command.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>

#include "chorus/coordinator/algorithm_settings.hpp"
#include "chorus/core/config.hpp"
#include "chorus/simulate/simulate.hpp"

namespace chorus::app {

std::function<int()> add_simulate_command(CLI::App& app, const char* argv0) {
  auto o = std::make_shared<simulate::SimulateOptions>();
  auto out = std::make_shared<std::string>(o->out.string());
  auto data_dir = std::make_shared<std::string>();
  // --foe, --distill, --frugal, --tae, --dro: KEY=VALUE settings, by table.
  auto settings =
      std::make_shared<std::map<std::string, std::vector<std::string>>>();
  auto* sub = app.add_subcommand(
      "simulate",
      "Run a whole fusion on this machine: nodes with private shards and their "
      "own experts, a coordinator, real mTLS on loopback; prints the results "
      "table (protocol P1 on the defaults)");
  sub->add_option("--experts", o->experts, "Number of nodes K")
      ->capture_default_str();
  sub->add_option("--algorithm", o->algorithm,
                  "Fusion algorithms, comma-separated; the first is run by the "
                  "coordinator and broadcast (bplus, bmax, distill, foe, "
                  "foe-distill, foe-select, frugal, tae, dro)")
      ->capture_default_str();
  sub->add_option(
         "--dataset", o->dataset,
         "A built-in data set (fashion-mnist, mnist, breast-cancer, wine, "
         "iris, "
         "digits) or a directory with task.toml and train/test files (.npz, "
         ".csv, or image folders)")
      ->capture_default_str();
  sub->add_option("--rounds", o->rounds,
                  "Fusion rounds (the transfer pool is queried "
                  "in that many slices)")
      ->capture_default_str();
  sub->add_option("--seed", o->seed,
                  "Seed of the split, the training and the fusion")
      ->capture_default_str();
  sub->add_option("--out", *out, "Run directory (experts are cached here)")
      ->capture_default_str();
  sub->add_option("--classes-per-expert", o->classes_per_expert,
                  "Classes in each node's task (at most the label space's)")
      ->capture_default_str();
  sub->add_option("--transfer-size", o->transfer_size,
                  "Public transfer pool U (unlabelled); 0: 10000, or half the "
                  "training split of a smaller data set")
      ->capture_default_str();
  sub->add_option(
         "--fusion-labels", o->fusion_labels,
         "Labelled fusion set V, taken from U; -1: 500, or a fifth of U "
         "when that is smaller")
      ->capture_default_str();
  sub->add_option(
         "--expert-epochs", o->expert_epochs,
         "Epochs of each expert's training; 0: 3 on Fashion-MNIST, more for "
         "small shards")
      ->capture_default_str();
  sub->add_option("--threads", o->threads,
                  "Torch threads for training and fusion")
      ->capture_default_str();
  sub->add_option("--device", o->device,
                  "Where experts train, nodes infer and fusion trains: cpu, "
                  "cuda or cuda:N (a LibTorch with CUDA)")
      ->capture_default_str();
  sub->add_option(
      "--data-dir", *data_dir,
      "Where a built-in data set's files are (default: Fashion-MNIST "
      "$CHORUS_DATA_DIR or /usr/share/datasets/fashion-mnist; MNIST "
      "$CHORUS_MNIST_DIR or data/mnist; scikit-learn's data sets "
      "/usr/lib/python3/dist-packages/sklearn/datasets/data)");
  for (const auto& table : coordinator::settings_tables()) {
    sub->add_option(
        "--" + table, (*settings)[table],
        fmt::format("A {} setting, KEY=VALUE, repeatable: the coordinator "
                    "config's [fusion.{}] keys (docs/configuration.md)",
                    table, table));
  }
  sub->add_flag("--processes", o->processes,
                "Run each node as its own 'chorus node' process");
  sub->add_flag("--resume", o->resume,
                "Continue the run in --out from its checkpoints, reusing every "
                "answer already collected");
  std::string self = argv0;
  return [o, out, data_dir, settings, self] {
    // The settings, read and checked as the coordinator's [fusion.<table>]
    // (an unknown key is refused by name).
    auto config = Config::parse("", "the command line");
    for (const auto& [table, assignments] : *settings) {
      for (const auto& s : assignments) config.set("fusion." + table + "." + s);
    }
    o->algorithms = coordinator::read_algorithm_settings(config);
    config.finish();
    o->out = *out;
    o->data_dir = *data_dir;
    std::error_code ec;
    o->chorus_binary = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) o->chorus_binary = std::filesystem::absolute(self);
    fmt::print(
        stderr,
        "chorus simulate: {} nodes, algorithm {}, data set {}, seed {}, run "
        "directory {}\n",
        o->experts, o->algorithm, o->dataset, o->seed, o->out.string());
    // The settings of every table the algorithms read, one line each.
    std::vector<std::string> shown;
    std::istringstream names(o->algorithm);
    for (std::string algorithm; std::getline(names, algorithm, ',');) {
      for (const auto& table : coordinator::tables_of(algorithm)) {
        if (std::find(shown.begin(), shown.end(), table) != shown.end())
          continue;
        shown.push_back(table);
        fmt::print(stderr, "{}\n",
                   coordinator::settings_line(o->algorithms, table));
      }
    }
    auto result = simulate::run_simulation(*o);
    fmt::print("\n{}\n", simulate::format_table(result));
    fmt::print(
        "experts: {} trained in {:.1f} s, {} from the cache; total {:.1f} s\n",
        o->experts - result.experts_cached, result.expert_seconds,
        result.experts_cached, result.total_seconds);
    fmt::print("run directory: {} (report.json, metrics.jsonl, fused.pt)\n",
               result.run_dir.string());
    fmt::print(
        "report: {} (the table, plots and per-node figures in one "
        "page)\n",
        result.html_report.string());
    return 0;
  };
}

}  // namespace chorus::app
