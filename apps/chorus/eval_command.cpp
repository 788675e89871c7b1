// chorus eval --model FILE [--adapted FILE] --dataset NAME [--data-dir DIR]
// [--json FILE]
#include "eval_command.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "chorus/core/fs.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/evaluate.hpp"

namespace chorus::app {
namespace {

struct EvalArgs {
  std::string model;
  std::string adapted;
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  std::string json;
  int threads = 2;
};

int run_eval(const EvalArgs& args) {
  const auto data_dir =
      path_or_env(args.data_dir, fusion::data_dir_variable(args.dataset));
  std::optional<std::filesystem::path> adapted;
  if (!args.adapted.empty()) adapted = args.adapted;
  auto report = fusion::evaluate_fused_model(args.model, args.dataset, data_dir,
                                             args.threads, adapted);
  fmt::print("model       {}\n", args.model);
  fmt::print("algorithm   {}\n", report.algorithm);
  fmt::print("spec        {}\n", report.spec);
  if (!report.task.empty()) fmt::print("task        {}\n", report.task);
  fmt::print("dataset     {}\n", report.dataset);
  fmt::print("examples    {}\n", report.examples);
  fmt::print("accuracy    {:.4f}\n\n", report.accuracy);
  fmt::print("{:<14} {:>9}\n", "class", "accuracy");
  for (std::size_t c = 0; c < report.class_names.size(); ++c) {
    fmt::print("{:<14} {:>9.4f}\n", report.class_names[c],
               report.class_accuracy[c]);
  }
  if (!args.json.empty()) {
    nlohmann::json out{{"model", args.model},
                       {"algorithm", report.algorithm},
                       {"spec", report.spec},
                       {"task", report.task},
                       {"dataset", report.dataset},
                       {"examples", report.examples},
                       {"accuracy", report.accuracy},
                       {"class_names", report.class_names},
                       {"class_accuracy", report.class_accuracy},
                       {"seconds", report.seconds}};
    write_file_atomic(args.json, out.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

std::function<int()> add_eval_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd =
      app.add_subcommand("eval", "Evaluate a saved fused model on a data set");
  cmd->add_option("--model", args->model,
                  "Fused model file (or a tae global model)")
      ->required();
  cmd->add_option(
         "--adapted", args->adapted,
         "With a tae model: the task a node adapted it to (the node's "
         "adapted.json, from chorus node adapt); scores the images of its "
         "classes. Without it, tae is scored on every class with the task "
         "saved in "
         "its file (the coordinator's adaptation on V; the prior in files "
         "without one)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--dataset", args->dataset,
                  fmt::format("Data set: {}",
                              fmt::join(fusion::evaluation_datasets(), ", ")))
      ->capture_default_str();
  cmd->add_option("--data-dir", args->data_dir,
                  "Directory of the IDX files (default: $CHORUS_DATA_DIR or "
                  "/usr/share/datasets/fashion-mnist)");
  cmd->add_option("--json", args->json, "Also write the report as JSON here");
  cmd->add_option("--threads", args->threads, "Torch threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  return [args] { return run_eval(*args); };
}

}  // namespace chorus::app
