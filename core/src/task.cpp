#include "chorus/core/task.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "chorus/core/error.hpp"

namespace chorus {

std::string_view dtype_name(InputDType dtype) noexcept {
  switch (dtype) {
    case InputDType::kFloat32:
      return "float32";
    case InputDType::kUInt8:
      return "uint8";
  }
  return "?";
}

InputDType parse_input_dtype(std::string_view text) {
  if (text == "float32") return InputDType::kFloat32;
  if (text == "uint8") return InputDType::kUInt8;
  fail(Code::kInvalidArgument,
       "input dtype must be \"float32\" or \"uint8\", got '{}'", text);
}

std::string_view normalisation_name(Normalisation n) noexcept {
  switch (n) {
    case Normalisation::kNone:
      return "none";
    case Normalisation::kPerChannel:
      return "per-channel";
    case Normalisation::kPerFeature:
      return "per-feature";
  }
  return "?";
}

Normalisation parse_normalisation(std::string_view text) {
  if (text == "none") return Normalisation::kNone;
  if (text == "per-channel") return Normalisation::kPerChannel;
  if (text == "per-feature") return Normalisation::kPerFeature;
  fail(Code::kInvalidArgument,
       "normalisation must be \"none\", \"per-channel\" or \"per-feature\", "
       "got '{}'",
       text);
}

LabelSpace::LabelSpace(std::vector<std::string> names)
    : names_(std::move(names)) {
  std::set<std::string_view> seen;
  for (const auto& n : names_) {
    CHORUS_CHECK(!n.empty(), "the label space has an empty label name");
    CHORUS_CHECK(seen.insert(n).second, "the label space names '{}' twice", n);
  }
}

std::optional<std::int64_t> LabelSpace::find(std::string_view name) const {
  auto it = std::find(names_.begin(), names_.end(), name);
  if (it == names_.end()) return std::nullopt;
  return static_cast<std::int64_t>(it - names_.begin());
}

std::int64_t LabelSpace::index(std::string_view name,
                               std::string_view what) const {
  if (auto i = find(name)) return *i;
  fail(Code::kInvalidArgument, "{}: label '{}' is not in the label space ({})",
       what, name, fmt::join(names_, ", "));
}

std::int64_t TaskSpec::input_elements() const {
  std::int64_t n = 1;
  for (auto d : input_shape) n *= d;
  return n;
}

std::int64_t TaskSpec::normalisation_size() const {
  switch (normalisation) {
    case Normalisation::kNone:
      return 0;
    case Normalisation::kPerChannel:
      return input_shape.empty() ? 0 : input_shape.front();
    case Normalisation::kPerFeature:
      return input_elements();
  }
  return 0;
}

bool TaskSpec::needs_statistics() const {
  return normalisation != Normalisation::kNone && mean.empty();
}

void TaskSpec::validate() const {
  CHORUS_CHECK(labels.size() >= 2,
               "task '{}': the label space needs at least two labels, got {}",
               name, labels.size());
  CHORUS_CHECK(!input_shape.empty() && input_shape.size() <= 4,
               "task '{}': input_shape must have 1 to 4 dimensions, got [{}]",
               name, fmt::join(input_shape, ", "));
  for (auto d : input_shape) {
    CHORUS_CHECK(d > 0 && d <= (1 << 20),
                 "task '{}': input_shape dimensions must be 1..{}, got [{}]",
                 name, 1 << 20, fmt::join(input_shape, ", "));
  }
  CHORUS_CHECK(input_elements() <= (std::int64_t{1} << 26),
               "task '{}': one input of [{}] has too many elements", name,
               fmt::join(input_shape, ", "));
  CHORUS_CHECK(mean.size() == std.size(),
               "task '{}': normalisation has {} means but {} stds", name,
               mean.size(), std.size());
  if (normalisation == Normalisation::kNone) {
    CHORUS_CHECK(mean.empty(),
                 "task '{}': mean/std are given but normalise is \"none\"",
                 name);
    return;
  }
  const auto want = normalisation_size();
  CHORUS_CHECK(mean.empty() || static_cast<std::int64_t>(mean.size()) == want,
               "task '{}': {} normalisation of inputs [{}] needs {} means and "
               "stds, got {}",
               name, normalisation_name(normalisation),
               fmt::join(input_shape, ", "), want, mean.size());
  for (std::size_t i = 0; i < mean.size(); ++i) {
    CHORUS_CHECK(
        std::isfinite(mean[i]) && std::isfinite(std[i]) && std[i] > 0,
        "task '{}': normalisation value {} is not usable (mean {}, std {}; std "
        "must be positive and both finite)",
        name, i, mean[i], std[i]);
  }
}

std::string TaskSpec::describe_input() const {
  return fmt::format("{} [{}]", dtype_name(dtype),
                     fmt::join(input_shape, ", "));
}

TaskSpec fashion_mnist_task() {
  TaskSpec t;
  t.name = "fashion-mnist";
  t.labels = LabelSpace({"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"});
  t.input_shape = {1, 28, 28};
  t.dtype = InputDType::kUInt8;
  return t;
}

namespace {

TaskSpec read_task_keys(Config& c, const TaskSpec& fallback,
                        const std::string& p) {
  TaskSpec t = fallback;
  t.name = c.get_string(p + ".name", t.name);
  t.labels = LabelSpace(c.get_string_array(p + ".labels", t.labels.names()));
  t.input_shape = c.get_int_array(p + ".input_shape", t.input_shape);
  t.dtype = parse_input_dtype(
      c.get_string(p + ".dtype", std::string(dtype_name(t.dtype))));
  const bool norm_given = c.has(p + ".normalise");
  t.normalisation = parse_normalisation(c.get_string(
      p + ".normalise", std::string(normalisation_name(t.normalisation))));
  // A task that changes its normalisation or shape does not inherit the
  // fallback's statistics.
  if (norm_given || c.has(p + ".input_shape")) t.mean.clear(), t.std.clear();
  t.mean = c.get_double_array(p + ".mean", t.mean);
  t.std = c.get_double_array(p + ".std", t.std);
  return t;
}

}  // namespace

// The keys of a [task] table, but `file`.
constexpr const char* kTaskKeys[] = {
    "name", "labels", "input_shape", "dtype", "normalise", "mean", "std"};

bool has_task(const Config& c, const std::string& prefix) {
  if (c.has(prefix + ".file")) return true;
  for (const char* k : kTaskKeys) {
    if (c.has(prefix + "." + k)) return true;
  }
  return false;
}

TaskSpec read_task(Config& c, const TaskSpec& fallback,
                   const std::string& prefix) {
  TaskSpec t;
  if (auto file = c.get_optional_string(prefix + ".file")) {
    for (const char* k : kTaskKeys) {
      CHORUS_CHECK(
          !c.has(prefix + "." + k),
          "{}: {}.file names a task file; {}.{} must then be in that file",
          c.path().string(), prefix, prefix, k);
    }
    t = read_task_file(c.resolve(*file), fallback);
  } else {
    t = read_task_keys(c, fallback, prefix);
  }
  try {
    t.validate();
  } catch (const Error& e) {
    fail(e.code(), "{}: [{}] {}",
         c.path().empty() ? "config" : c.path().string(), prefix, e.what());
  }
  return t;
}

TaskSpec read_task_file(const std::filesystem::path& path,
                        const TaskSpec& fallback) {
  auto c = Config::load(path);
  auto t = read_task_keys(c, fallback, "task");
  c.finish();
  try {
    t.validate();
  } catch (const Error& e) {
    fail(e.code(), "{}: {}", path.string(), e.what());
  }
  return t;
}

std::string to_toml(const TaskSpec& t) {
  std::vector<std::string> labels;
  for (const auto& l : t.labels.names()) labels.push_back(toml_quoted(l));
  std::string out = fmt::format(
      "[task]\nname = {}\nlabels = [{}]\ninput_shape = [{}]\ndtype = \"{}\"\n"
      "normalise = \"{}\"\n",
      toml_quoted(t.name), fmt::join(labels, ", "),
      fmt::join(t.input_shape, ", "), dtype_name(t.dtype),
      normalisation_name(t.normalisation));
  if (!t.mean.empty()) {
    out += fmt::format("mean = [{}]\nstd = [{}]\n", fmt::join(t.mean, ", "),
                       fmt::join(t.std, ", "));
  }
  return out;
}

std::optional<std::string> task_mismatch(
    const TaskSpec& task, const std::vector<std::int64_t>& input_shape,
    std::optional<InputDType> input_dtype,
    const std::vector<std::string>& labels, std::string_view who) {
  auto shape = input_shape;
  if (shape.size() + 1 == task.input_shape.size() &&
      task.input_shape.front() == 1) {
    shape.insert(shape.begin(), 1);
  }
  if (!input_shape.empty() && shape != task.input_shape) {
    return fmt::format(
        "{} takes inputs of shape [{}], but the federation's task '{}' has "
        "inputs of "
        "shape [{}]",
        who, fmt::join(input_shape, ", "), task.name,
        fmt::join(task.input_shape, ", "));
  }
  // A node converts uint8 inputs to float itself; an expert that takes only
  // bytes cannot take a float task.
  if (input_dtype == InputDType::kUInt8 && task.dtype == InputDType::kFloat32) {
    return fmt::format(
        "{} takes uint8 inputs, but the task '{}' sends float32 inputs", who,
        task.name);
  }
  if (labels.empty()) {
    return fmt::format("{} announces no labels; the task '{}' has labels ({})",
                       who, task.name, fmt::join(task.labels.names(), ", "));
  }
  std::set<std::string_view> seen;
  for (const auto& l : labels) {
    if (!task.labels.find(l)) {
      return fmt::format(
          "{} has label '{}', which is not in the label space of task '{}' "
          "({})",
          who, l, task.name, fmt::join(task.labels.names(), ", "));
    }
    if (!seen.insert(l).second) {
      return fmt::format("{} names label '{}' twice", who, l);
    }
  }
  return std::nullopt;
}

}  // namespace chorus
