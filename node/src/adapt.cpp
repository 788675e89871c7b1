#include "chorus/node/adapt.hpp"

#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/dro.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/node/run.hpp"
#include "chorus/node/service.hpp"

namespace chorus::node {
namespace {

double accuracy(const torch::Tensor& predicted, const torch::Tensor& y) {
  return predicted.argmax(1).eq(y).to(torch::kFloat64).mean().item<double>();
}

// Images and their labels (indices into the model's outputs) from files.
std::pair<torch::Tensor, torch::Tensor> read_labelled(
    const std::filesystem::path& images, const std::filesystem::path& labels,
    std::int64_t outputs) {
  CHORUS_CHECK(!labels.empty(), "'{}' needs its labels file", images.string());
  auto x = fusion::read_image_file(images);
  auto y = fusion::read_label_file(labels);
  CHORUS_CHECK(y.size(0) == x.size(0),
               "'{}' has {} labels for the {} images of '{}'", labels.string(),
               y.size(0), x.size(0), images.string());
  CHORUS_CHECK(
      y.min().item<std::int64_t>() >= 0 &&
          y.max().item<std::int64_t>() < outputs,
      "'{}': labels must index the global model's {} outputs, got {}..{}",
      labels.string(), outputs, y.min().item<std::int64_t>(),
      y.max().item<std::int64_t>());
  return {x, y};
}

// Rows of `y` in `classes`, relabelled as indices into `classes`.
std::pair<torch::Tensor, torch::Tensor> restrict_to(
    const torch::Tensor& x, const torch::Tensor& y,
    const std::vector<std::int64_t>& classes) {
  auto local = torch::full_like(y, -1);
  for (std::size_t i = 0; i < classes.size(); ++i) {
    local.masked_fill_(y.eq(classes[i]), static_cast<std::int64_t>(i));
  }
  auto rows = local.ge(0).nonzero().flatten();
  return {x.index_select(0, rows), local.index_select(0, rows)};
}

// The task shot labels `y` hold: their classes, in increasing order (at
// least 2).
std::vector<std::int64_t> task_of_shots(const torch::Tensor& y,
                                        const std::filesystem::path& file) {
  std::set<std::int64_t> present;
  for (std::int64_t i = 0; i < y.size(0); ++i)
    present.insert(y[i].item<std::int64_t>());
  CHORUS_CHECK(present.size() >= 2,
               "'{}': the shots hold {} class(es), a task needs 2",
               file.string(), present.size());
  return {present.begin(), present.end()};
}

// The node's own task, for shots drawn from its local data: its expert's
// labels. Throws when the config draws no shots.
std::vector<std::string> own_task(const NodeConfig& config) {
  CHORUS_CHECK(config.adapt_shots_per_class > 0,
               "no shots: give --shots FILE --shot-labels FILE, or set "
               "adapt.shots_per_class to draw them from the node's local data");
  return config.expert.labels.empty() ? load_expert(config.expert)->labels()
                                      : config.expert.labels;
}

// A numeric attribute of a fused model, or `fallback`.
double attribute_or(const fusion::FusedModel& m, const std::string& key,
                    double fallback) {
  auto it = m.attributes.find(key);
  if (it == m.attributes.end()) return fallback;
  try {
    return std::stod(it->second);
  } catch (const std::exception&) {
    fail(Code::kDataLoss, "the dro model's attribute {} is '{}', not a number",
         key, it->second);
  }
}

// The positions of `labels` in `space`; 0..k-1 when `space` is empty (an
// initialisation that records no label space).
std::vector<std::int64_t> positions_in(const std::vector<std::string>& space,
                                       const std::vector<std::string>& labels) {
  std::vector<std::int64_t> out;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (space.empty()) {
      out.push_back(static_cast<std::int64_t>(i));
      continue;
    }
    auto it = std::find(space.begin(), space.end(), labels[i]);
    CHORUS_CHECK_CODE(it != space.end(), Code::kFailedPrecondition,
                      "label '{}' of this node is not in the federation's "
                      "label space the dro model records",
                      labels[i]);
    out.push_back(it - space.begin());
  }
  return out;
}

// chorus node adapt with a dro initialisation.
LocalAdaptReport adapt_dro_locally(const LocalAdaptOptions& o,
                                   const StoredModel& stored) {
  const auto& config = o.config;
  auto init = fusion::load_fused_model(stored.file);
  const auto space = label_space_of(init);
  const auto outputs = space.empty() ? std::numeric_limits<std::int64_t>::max()
                                     : static_cast<std::int64_t>(space.size());
  LocalAdaptReport report;
  report.model = stored.file;
  LabelledShots shots;
  std::vector<std::int64_t> classes;
  std::vector<std::string> names;
  if (!o.shots.empty()) {
    auto [x, y] = read_labelled(o.shots, o.shot_labels, outputs);
    classes = task_of_shots(y, o.shot_labels);
    for (auto c : classes) {
      names.push_back(space.empty() ? std::to_string(c)
                                    : space[static_cast<std::size_t>(c)]);
    }
    std::tie(shots.inputs, shots.labels) = restrict_to(x, y, classes);
  } else {
    names = own_task(config);
    classes = classes_in_space(init, names);
    shots = draw_local_shots(names, config.adapt_shots_per_class,
                             config.adapt_seed, config.train.source());
  }
  report.outcome = adapt_dro(init, classes, names, shots);
  report.outcome.round = stored.round;
  report.written = write_adapted(config.state_dir, report.outcome);
  if (!o.eval.empty()) {
    CHORUS_CHECK_CODE(!space.empty(), Code::kFailedPrecondition,
                      "the dro model records no label space, so '{}' cannot "
                      "be matched to its classes",
                      o.eval.string());
    auto [x, y] = read_labelled(o.eval, o.eval_labels, outputs);
    auto [tx, ty] = restrict_to(x, y, classes);
    report.eval_images = tx.size(0);
    CHORUS_CHECK(report.eval_images > 0,
                 "'{}' has no image of the task's classes", o.eval.string());
    report.adapted_accuracy =
        accuracy(fusion::predict_proba(*report.outcome.model, tx), ty);
  }
  log::get("node")->info(
      "event=adapted_locally algorithm=dro round={} classes={} shots={} "
      "shot_accuracy={:.4f} written={}",
      report.outcome.round, classes.size(), report.outcome.shots,
      report.outcome.shot_accuracy, report.written.string());
  return report;
}

}  // namespace

std::vector<std::int64_t> classes_in_space(
    const fusion::FusedModel& init, const std::vector<std::string>& labels) {
  return positions_in(label_space_of(init), labels);
}

std::vector<std::string> label_space_of(const fusion::FusedModel& init) {
  auto it = init.attributes.find("labels");
  if (it == init.attributes.end() || it->second.empty()) return {};
  try {
    return nlohmann::json::parse(it->second).get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    fail(Code::kDataLoss, "the dro model's label space is unreadable: {}",
         e.what());
  }
}

AdaptOutcome adapt_dro(const fusion::FusedModel& init,
                       const std::vector<std::int64_t>& classes,
                       std::vector<std::string> class_names,
                       const LabelledShots& shots, std::int64_t steps) {
  CHORUS_CHECK(classes.size() >= 2, "a task needs at least 2 classes, got {}",
               classes.size());
  CHORUS_CHECK(shots.inputs.defined() && shots.inputs.size(0) > 0,
               "no shots to adapt with");
  const auto shape = shots.inputs.sizes().slice(1).vec();
  CHORUS_CHECK(shape == init.spec.input_shape,
               "the shots are of shape [{}], the dro model takes [{}]",
               fmt::join(shape, ", "), fmt::join(init.spec.input_shape, ", "));
  const auto ways = static_cast<std::int64_t>(classes.size());
  if (steps <= 0) {
    steps = static_cast<std::int64_t>(
        attribute_or(init, "adapt_steps",
                     static_cast<double>(fusion::DroOptions().adapt_steps())));
  }
  const double lr =
      attribute_or(init, "adapt_lr", fusion::DroOptions().adapt_lr());
  AdaptOutcome out;
  out.algorithm = "dro";
  out.model = fusion::adapt_initialisation(init, shots.inputs, shots.labels,
                                           ways, steps, lr);
  auto spec = init.spec;
  spec.num_classes = ways;
  out.spec = spec.to_string();
  out.classes = classes;
  out.class_names = std::move(class_names);
  out.shots = shots.labels.numel();
  out.shot_accuracy =
      accuracy(fusion::predict_proba(*out.model, shots.inputs), shots.labels);
  return out;
}

std::vector<std::int64_t> classes_of(const fusion::TaeModel& model,
                                     const std::vector<std::string>& labels) {
  const auto& space = model.labels();
  std::vector<std::int64_t> classes;
  for (const auto& l : labels) {
    auto it = std::find(space.begin(), space.end(), l);
    CHORUS_CHECK_CODE(
        it != space.end(), Code::kFailedPrecondition,
        "label '{}' of this node is not an output of the global model", l);
    classes.push_back(it - space.begin());
  }
  return classes;
}

AdaptOutcome adapt_tae(fusion::TaeModel& model,
                       const std::vector<std::int64_t>& classes,
                       const LabelledShots& shots, torch::Tensor tau,
                       const torch::Tensor& unlabelled) {
  CHORUS_CHECK(classes.size() >= 2, "a task needs at least 2 classes, got {}",
               classes.size());
  if (!tau.defined()) tau = fusion::task_descriptor(classes, model.task_dim());
  AdaptOutcome out;
  out.adaptation =
      model.adapt(tau, shots.inputs, shots.labels, classes, unlabelled);
  out.classes = classes;
  for (auto c : classes) {
    out.class_names.push_back(static_cast<std::size_t>(c) <
                                      model.labels().size()
                                  ? model.labels()[static_cast<std::size_t>(c)]
                                  : std::to_string(c));
  }
  out.shots = shots.labels.numel();
  out.shot_accuracy = accuracy(
      model.predict(shots.inputs, out.adaptation, classes), shots.labels);
  return out;
}

std::filesystem::path write_adapted(const std::filesystem::path& state_dir,
                                    const AdaptOutcome& o) {
  const auto path = state_dir / "adapted.json";
  if (o.algorithm == "dro") {
    // The adapted weights were learnt from private data: they live here.
    fusion::FusedModel adapted{
        .algorithm = "dro-adapted",
        .spec = fusion::ModelSpec::parse(o.spec),
        .attributes = {{"classes", nlohmann::json(o.class_names).dump()},
                       {"outputs", nlohmann::json(o.classes).dump()},
                       {"round", std::to_string(o.round)}},
        .model = o.model};
    fusion::save_fused_model(adapted, state_dir / "adapted.pt");
    nlohmann::json j{
        {"algorithm", "dro"},       {"round", o.round},
        {"classes", o.class_names}, {"outputs", o.classes},
        {"model", "adapted.pt"},    {"spec", o.spec},
        {"shots", o.shots},         {"shot_accuracy", o.shot_accuracy}};
    write_file_atomic(path, j.dump(2) + "\n");
    return path;
  }
  nlohmann::json j{
      {"algorithm", "tae"},
      {"round", o.round},
      {"classes", o.class_names},
      {"outputs", o.classes},
      {"mean", fusion::to_doubles(o.adaptation.posterior.mean)},
      {"logvar", fusion::to_doubles(o.adaptation.posterior.logvar)},
      {"bound", o.adaptation.bound},
      {"gibbs_loss", o.adaptation.gibbs_loss},
      {"kl", o.adaptation.kl},
      {"shots", o.shots},
      {"unlabelled", o.adaptation.unlabelled},
      {"shot_accuracy", o.shot_accuracy}};
  // The prototypes' votes relabelled by the shots and the features
  // readout's head (the shots' class means, trained): derived from private
  // data, so they live here and never in the AdaptResponse.
  auto rows_of = [](const torch::Tensor& t) {
    auto rows = nlohmann::json::array();
    for (std::int64_t r = 0; r < t.size(0); ++r)
      rows.push_back(fusion::to_doubles(t[r]));
    return rows;
  };
  if (o.adaptation.votes.defined()) j["votes"] = rows_of(o.adaptation.votes);
  if (o.adaptation.head_weight.defined()) {
    j["head_weight"] = rows_of(o.adaptation.head_weight);
    j["head_bias"] = fusion::to_doubles(o.adaptation.head_bias);
  }
  write_file_atomic(path, j.dump(2) + "\n");
  return path;
}

LocalAdaptReport adapt_locally(const LocalAdaptOptions& o) {
  const auto& config = o.config;
  set_torch_threads(config.threads);
  auto stored = read_stored_model(config.state_dir);
  CHORUS_CHECK_CODE(
      stored && (stored->algorithm == "tae" || stored->algorithm == "dro"),
      Code::kFailedPrecondition,
      "no tae or dro global model has been pushed to this node (state "
      "directory '{}' holds {})",
      config.state_dir.string(),
      stored ? "a '" + stored->algorithm + "' model" : std::string("none"));
  if (stored->algorithm == "dro") {
    CHORUS_CHECK(o.unlabelled.empty(),
                 "'{}': the dro model this node holds adapts with labelled "
                 "shots only; unlabelled images are for tae's features "
                 "readout",
                 o.unlabelled.string());
    return adapt_dro_locally(o, *stored);
  }
  auto model = fusion::TaeModel::load(stored->file);
  LocalAdaptReport report;
  report.model = stored->file;

  LabelledShots shots;
  std::vector<std::int64_t> classes;
  if (!o.shots.empty()) {
    // A task of the classes the shots hold: the node's own or a new one.
    auto [x, y] = read_labelled(o.shots, o.shot_labels, model.outputs());
    classes = task_of_shots(y, o.shot_labels);
    std::tie(shots.inputs, shots.labels) = restrict_to(x, y, classes);
  } else {
    auto labels = own_task(config);
    classes = classes_of(model, labels);
    shots = draw_local_shots(labels, config.adapt_shots_per_class,
                             config.adapt_seed, config.train.source());
  }
  torch::Tensor unlabelled;
  if (!o.unlabelled.empty()) {
    unlabelled = fusion::read_image_file(o.unlabelled);
    CHORUS_CHECK(unlabelled.size(0) > 0, "'{}' holds no image",
                 o.unlabelled.string());
    CHORUS_CHECK(unlabelled[0].numel() == model.input_dim(),
                 "'{}': images of {} values, the global model takes {}",
                 o.unlabelled.string(), unlabelled[0].numel(),
                 model.input_dim());
    CHORUS_CHECK(torch::isfinite(unlabelled).all().item<bool>(),
                 "'{}' holds NaN or Inf", o.unlabelled.string());
  }
  report.outcome = adapt_tae(model, classes, shots, {}, unlabelled);
  if (unlabelled.defined() && report.outcome.adaptation.unlabelled == 0) {
    log::get("node")->warn(
        "event=unlabelled_unused file={} reason=\"the task reads out by the "
        "prototypes (every class is one the experts answered for); only the "
        "features readout uses unlabelled images\"",
        o.unlabelled.string());
  }
  report.outcome.round = stored->round;
  report.written = write_adapted(config.state_dir, report.outcome);

  if (!o.eval.empty()) {
    auto [x, y] = read_labelled(o.eval, o.eval_labels, model.outputs());
    auto [tx, ty] = restrict_to(x, y, classes);
    report.eval_images = tx.size(0);
    CHORUS_CHECK(report.eval_images > 0,
                 "'{}' has no image of the task's classes", o.eval.string());
    report.prior_accuracy = accuracy(
        model.predict(
            tx, model.prior(fusion::task_descriptor(classes, model.task_dim())),
            classes),
        ty);
    report.adapted_accuracy =
        accuracy(model.predict(tx, report.outcome.adaptation, classes), ty);
  }
  log::get("node")->info(
      "event=adapted_locally round={} classes={} shots={} unlabelled={} "
      "bound={:.4f} written={}",
      report.outcome.round, classes.size(), report.outcome.shots,
      report.outcome.adaptation.unlabelled, report.outcome.adaptation.bound,
      report.written.string());
  return report;
}

}  // namespace chorus::node
