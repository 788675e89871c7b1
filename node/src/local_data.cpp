#include "chorus/node/local_data.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <chrono>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/gnmax.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/partition.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/node/expert.hpp"

namespace chorus::node {

LocalData load_local_data(const LocalDataOptions& o) {
  LocalData out;
  torch::Tensor raw_x, y;
  if (o.dataset() == "files") {
    CHORUS_CHECK(
        o.task().has_value(),
        "train.dataset = \"files\" needs the task its data is read against "
        "(the "
        "[task] table, or task.file: labels, input_shape, dtype, normalise)");
    CHORUS_CHECK(!o.data().path.empty(),
                 "train.dataset = \"files\" needs train.data (the labelled "
                 "file or image "
                 "folder)");
    out.task = *o.task();
    auto ex = fusion::read_examples(o.data(), out.task, /*need_labels=*/true);
    raw_x = ex.inputs;
    y = ex.labels;
  } else {
    auto b = fusion::load_builtin(
        o.dataset(),
        path_or_env(o.data_dir(), fusion::data_dir_variable(o.dataset())));
    out.task = o.task().value_or(b.task);
    CHORUS_CHECK(out.task.labels == b.task.labels &&
                     out.task.input_shape == b.task.input_shape,
                 "the [task] table (labels [{}], inputs [{}]) does not "
                 "describe the built-in "
                 "data set '{}' (labels [{}], inputs [{}])",
                 fmt::join(out.task.labels.names(), ", "),
                 fmt::join(out.task.input_shape, ", "), o.dataset(),
                 fmt::join(b.task.labels.names(), ", "),
                 fmt::join(b.task.input_shape, ", "));
    raw_x = b.train.inputs;
    y = b.train.labels;
  }
  if (out.task.needs_statistics()) {
    fusion::fit_normalisation(out.task, raw_x);
    log::get("node")->warn(
        "event=normalisation_fitted_locally task={} reason=\"the task names {} "
        "normalisation "
        "without statistics; they were fitted on this node's data. Give the "
        "federation's "
        "mean and std in the task file so that every party normalises alike\"",
        out.task.name, normalisation_name(out.task.normalisation));
  }
  out.examples = fusion::Examples{fusion::to_model_inputs(raw_x, out.task), y};
  return out;
}

namespace {

std::vector<std::int64_t> class_indices(const std::vector<std::string>& labels,
                                        const TaskSpec& task) {
  std::vector<std::int64_t> classes;
  for (const auto& label : labels) {
    auto c = task.labels.find(label);
    CHORUS_CHECK(c.has_value(),
                 "label '{}' is not in the label space of '{}' (expected one "
                 "of: {})",
                 label, task.name, fmt::join(task.labels.names(), ", "));
    classes.push_back(*c);
  }
  return classes;
}

}  // namespace

LabelledShots draw_local_shots(const std::vector<std::string>& labels,
                               std::int64_t per_class, std::uint64_t seed,
                               const LocalDataOptions& source) {
  CHORUS_CHECK(per_class >= 1, "shots per class must be at least 1, got {}",
               per_class);
  auto data = load_local_data(source);
  const auto classes = class_indices(labels, data.task);
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<torch::Tensor> xs, ys;
  for (std::size_t j = 0; j < classes.size(); ++j) {
    auto rows = data.examples.labels.eq(classes[j]).nonzero().flatten();
    auto pick =
        rows.index_select(0, torch::randperm(rows.numel(), gen, torch::kLong)
                                 .slice(0, 0, per_class));
    xs.push_back(data.examples.inputs.index_select(0, pick));
    ys.push_back(torch::full({pick.numel()}, static_cast<std::int64_t>(j),
                             torch::kLong));
  }
  return {torch::cat(xs), torch::cat(ys)};
}

TrainExpertResult train_builtin_expert(const std::vector<std::string>& labels,
                                       const TrainExpertOptions& options,
                                       const std::filesystem::path& out) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  CHORUS_CHECK(labels.size() >= 2,
               "an expert needs at least two labels, got {}", labels.size());
  CHORUS_CHECK(options.shards() >= 1 && options.shard() >= 0 &&
                   options.shard() < options.shards(),
               "train.shard must be in 0..{}, got {}", options.shards() - 1,
               options.shard());
  CHORUS_CHECK(options.holdout() > 0 && options.holdout() < 0.5,
               "train.holdout must be in (0, 0.5), got {}", options.holdout());
  auto data = load_local_data(options.source());
  const auto& task = data.task;
  const auto classes = class_indices(labels, task);
  const auto arch =
      fusion::resolve_architecture(options.arch(), task.input_shape);
  if (out.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(out.parent_path(), ec);
    CHORUS_CHECK_CODE(!ec, Code::kInternal, "cannot create '{}': {}",
                      out.parent_path().string(), ec.message());
  }
  const auto& all = data.examples;
  auto shard =
      fusion::iid_partition(all.size(), options.shards(), options.seed())
          .at(static_cast<std::size_t>(options.shard()));
  shard = std::get<0>(shard.sort());
  auto shard_labels = all.labels.index_select(0, shard);
  auto keep = shard.index_select(
      0, fusion::class_subset_indices(shard_labels, classes));
  CHORUS_CHECK(keep.numel() >= 10,
               "only {} training examples of [{}] in shard {}/{}", keep.numel(),
               fmt::join(labels, ", "), options.shard(), options.shards());
  auto x = all.inputs.index_select(0, keep);
  auto y = fusion::to_local_labels(all.labels.index_select(0, keep), classes);
  // One generator draws the hold-out split, then the initial weights.
  auto gen = fusion::make_generator(options.seed());
  auto perm = torch::randperm(x.size(0), gen, torch::kLong);
  const auto n_hold = std::max<std::int64_t>(
      1, static_cast<std::int64_t>(options.holdout() *
                                   static_cast<double>(x.size(0))));
  auto hold = perm.slice(0, 0, n_hold);
  auto rest = perm.slice(0, n_hold);

  fusion::ModelSpec spec{
      .arch = arch,
      .input_shape = task.input_shape,
      .num_classes = static_cast<std::int64_t>(labels.size())};
  // BatchNorm mixes a batch's examples, which DP-SGD cannot clip apart.
  CHORUS_CHECK(!options.privacy() || arch == "lenet" || arch == "mlp",
               "[train.privacy] trains an mlp or a lenet (with GroupNorm); "
               "'{}' has BatchNorm layers, which DP-SGD cannot train",
               arch);
  if (options.privacy() && arch == "lenet") spec.norm = "group";
  const auto teachers = options.teachers();
  CHORUS_CHECK(teachers >= 1, "train.teachers must be at least 1, got {}",
               teachers);
  const auto per_teacher = rest.numel() / teachers;
  CHORUS_CHECK(per_teacher >= 10,
               "train.teachers = {} leaves {} training examples per teacher "
               "({} in all); each teacher needs at least 10",
               teachers, per_teacher, rest.numel());
  // The initial weights of every teacher first, from the one generator.
  std::vector<std::shared_ptr<fusion::ClassifierImpl>> models;
  for (std::int64_t k = 0; k < teachers; ++k)
    models.push_back(fusion::make_classifier(spec, gen));
  TrainExpertResult result;
  for (std::int64_t k = 0; k < teachers; ++k) {
    // Teacher k's part: disjoint slices of the shuffled training rows (the
    // last takes the remainder), so one example shapes one teacher.
    auto part =
        rest.slice(0, k * per_teacher,
                   k + 1 == teachers ? rest.numel() : (k + 1) * per_teacher);
    const auto label =
        teachers == 1
            ? fmt::format("train {} expert{}", arch,
                          options.privacy() ? " (DP-SGD)" : "")
            : fmt::format("train {} teacher {}/{}{}", arch, k + 1, teachers,
                          options.privacy() ? " (DP-SGD)" : "");
    const auto train_options = fusion::TrainOptions()
                                   .epochs(options.epochs())
                                   .batch_size(options.batch_size())
                                   .lr(options.lr())
                                   .seed(options.seed() + k)
                                   .threads(options.threads())
                                   .device(options.device())
                                   .progress(label)
                                   .on_epoch(options.on_epoch());
    auto& model = *models[static_cast<std::size_t>(k)];
    if (options.privacy()) {
      // Each teacher sees its own examples only, so the ensemble's
      // guarantee is the weakest teacher's (parallel composition): parts of
      // different sizes give different sampling rates, and with a given
      // noise multiplier different epsilons.
      fusion::DpGuarantee guarantee;
      fusion::train_private(model, x.index_select(0, part),
                            y.index_select(0, part), train_options,
                            *options.privacy(), &guarantee);
      if (!result.privacy || guarantee.epsilon > result.privacy->epsilon)
        result.privacy = guarantee;
    } else {
      fusion::train(model, x.index_select(0, part), y.index_select(0, part),
                    train_options);
    }
  }
  result.examples = rest.numel();
  result.holdout = hold.numel();
  result.teachers = teachers;
  auto x_hold = x.index_select(0, hold);
  auto y_hold = y.index_select(0, hold);
  std::vector<torch::Tensor> answers;
  torch::Tensor mean;
  for (const auto& model : models) {
    answers.push_back(fusion::predict_proba(*model, x_hold));
    mean = mean.defined() ? mean + answers.back() : answers.back();
    result.teacher_accuracy += fusion::accuracy(answers.back(), y_hold);
  }
  result.teacher_accuracy /= static_cast<double>(teachers);
  result.holdout_accuracy = fusion::accuracy(mean, y_hold);
  result.vote_accuracy =
      fusion::accuracy(fusion::vote_histogram(answers), y_hold);
  result.arch = arch;
  result.input_shape = task.input_shape;
  save_builtin_expert(models, spec, labels, out, result.privacy);
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace chorus::node
