// chorus predict --input FILE (--model FUSED [--adapted FILE] | --coordinator
//                HOST:PORT --pki DIR --identity NAME) [--labels FILE] [--limit
//                N]
//                [--json FILE]
#include "predict_command.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "chorus/coordinator/predict.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "host_port.hpp"

namespace chorus::app {
namespace {

struct PredictArgs {
  coordinator::PredictOptions options;
  std::string input, labels, model, adapted, coordinator, pki,
      identity = "operator", json;
  double deadline_s = 120;
  std::int64_t show = 20;
};

int run_predict(PredictArgs& a) {
  auto& o = a.options;
  o.input = a.input;
  o.labels = a.labels;
  o.model = a.model;
  o.adapted = a.adapted;
  o.deadline =
      std::chrono::milliseconds(static_cast<std::int64_t>(a.deadline_s * 1000));
  if (!a.coordinator.empty()) {
    std::tie(o.host, o.port) = parse_host_port(a.coordinator, "--coordinator");
    const std::filesystem::path pki = a.pki;
    o.tls =
        protocol::TlsMaterial::load(pki / "ca.crt", pki / (a.identity + ".crt"),
                                    pki / (a.identity + ".key"));
  }
  auto report = coordinator::predict_from_file(o);

  const auto n = static_cast<std::int64_t>(report.predicted.size());
  fmt::print("{:>7}  {:<14} {:>11}\n", "image", "prediction", "probability");
  for (std::int64_t i = 0; i < n && (a.show < 0 || i < a.show); ++i) {
    const auto label = report.predicted[static_cast<std::size_t>(i)];
    fmt::print("{:>7}  {:<14} {:>11.4f}\n", i,
               report.class_names[static_cast<std::size_t>(label)],
               report.probabilities[static_cast<std::size_t>(i)]
                                   [static_cast<std::size_t>(label)]);
  }
  if (a.show >= 0 && n > a.show) {
    fmt::print(
        "  ... {} more (--show -1 prints every row, --json writes them all)\n",
        n - a.show);
  }
  fmt::print("\nsource          {}\n", report.source);
  fmt::print("algorithm       {}{}\n", report.algorithm,
             report.round > 0 ? fmt::format(" (round {})", report.round) : "");
  fmt::print("images          {}\n", n);
  if (!o.host.empty()) {
    fmt::print(
        "expert queries  {} ({:.2f} per image)\n", report.expert_queries,
        n ? static_cast<double>(report.expert_queries) / static_cast<double>(n)
          : 0.0);
    // Only when some node is priced ([fusion.frugal] costs) does the cost
    // say more than the count.
    if (report.expert_cost > 0 &&
        report.expert_cost != static_cast<double>(report.expert_queries)) {
      fmt::print("their cost      {:.2f} ({:.2f} per image)\n",
                 report.expert_cost,
                 n ? report.expert_cost / static_cast<double>(n) : 0.0);
    }
  }
  if (!report.experts_away.empty()) {
    fmt::print("experts away    {} (the coordinator answered without them)\n",
               fmt::join(report.experts_away, ", "));
  }
  if (report.accuracy) {
    fmt::print("accuracy        {:.4f}{}\n", *report.accuracy,
               report.scored < n
                   ? fmt::format(" (the {} images of the task's classes)",
                                 report.scored)
                   : "");
  } else if (!o.labels.empty()) {
    fmt::print("accuracy        - (no image of the task's classes)\n");
  }
  fmt::print("seconds         {:.2f}\n", report.seconds);
  if (!a.json.empty()) {
    nlohmann::json out{{"source", report.source},
                       {"algorithm", report.algorithm},
                       {"round", report.round},
                       {"class_names", report.class_names},
                       {"class_labels", report.class_labels},
                       {"predicted", report.predicted},
                       {"probabilities", report.probabilities},
                       {"expert_queries", report.expert_queries},
                       {"expert_cost", report.expert_cost},
                       {"experts_away", report.experts_away},
                       {"seconds", report.seconds}};
    if (report.accuracy) {
      out["accuracy"] = *report.accuracy;
      out["scored"] = report.scored;
    }
    write_file_atomic(a.json, out.dump() + "\n");
    fmt::print("wrote {}\n", a.json);
  }
  return 0;
}

}  // namespace

std::function<int()> add_predict_command(CLI::App& app) {
  auto args = std::make_shared<PredictArgs>();
  CLI::App* cmd = app.add_subcommand(
      "predict",
      "Fused predictions for the images in a file, from a saved fused model "
      "(--model) or a running coordinator (--coordinator)");
  cmd->add_option(
         "--input", args->input,
         "Images: an IDX file (e.g. t10k-images-idx3-ubyte.gz) or a tensor "
         "saved by Python's torch.save, [N, 1, H, W] or [N, H, W]")
      ->required()
      ->check(CLI::ExistingFile);
  auto* model = cmd->add_option("--model", args->model,
                                "A fused model that needs no experts (distill, "
                                "foe-distill, ..., tae)")
                    ->check(CLI::ExistingFile);
  cmd->add_option(
         "--adapted", args->adapted,
         "With a tae --model: the task a node adapted it to (its adapted.json, "
         "from chorus node adapt); predicts among that task's classes. Without "
         "it, tae predicts every class with the task saved in its file (the "
         "coordinator's adaptation on V; the prior in files without one)")
      ->check(CLI::ExistingFile)
      ->needs(model);
  auto* coord = cmd->add_option(
      "--coordinator", args->coordinator,
      "HOST:PORT of a coordinator serving fused predictions (coordinator "
      "--serve); "
      "needed for foe, frugal and the ensembles, which ask the nodes");
  model->excludes(coord);
  cmd->add_option("--pki", args->pki,
                  "With --coordinator: the directory holding ca.crt and the "
                  "operator's IDENTITY.crt / IDENTITY.key")
      ->default_val("pki");
  cmd->add_option("--identity", args->identity,
                  "With --coordinator: the operator's certificate name "
                  "(listed in the coordinator's coordinator.operators)")
      ->capture_default_str();
  cmd->add_option("--labels", args->labels,
                  "An IDX label file: also print the accuracy")
      ->check(CLI::ExistingFile);
  cmd->add_option("--limit", args->options.limit,
                  "Predict the first N images only")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", args->options.batch,
                  "Images per request to the coordinator")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--deadline", args->deadline_s,
                  "Seconds to wait for one request")
      ->capture_default_str();
  cmd->add_option("--show", args->show, "Rows to print (-1: all)")
      ->capture_default_str();
  cmd->add_option(
      "--json", args->json,
      "Write every prediction (labels and probabilities) as JSON here");
  cmd->add_option("--threads", args->options.threads, "Torch threads (--model)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->callback([cmd] {
    if (cmd->count("--model") + cmd->count("--coordinator") != 1) {
      throw CLI::ValidationError(
          "predict", "give --model FILE or --coordinator HOST:PORT");
    }
  });
  return [args] { return run_predict(*args); };
}

}  // namespace chorus::app
