#include "chorus/coordinator/algorithm_settings.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/fusion/algorithms.hpp"

namespace chorus::coordinator {
namespace {

// Reads and checks the keys of one [fusion.<table>], naming the key (and
// the file, when there is one) in every refusal.
class Table {
 public:
  Table(Config& c, std::string table)
      : c_(c),
        prefix_("fusion." + table + "."),
        where_(c.path().empty() ? std::string() : c.path().string() + ": ") {}

  std::int64_t count(const char* key, std::int64_t fallback,
                     std::int64_t least) {
    auto v = c_.get_int(prefix_ + key, fallback);
    CHORUS_CHECK(v >= least, "{}{}{} must {}, got {}", where_, prefix_, key,
                 least == 0 ? std::string("not be negative")
                            : fmt::format("be at least {}", least),
                 v);
    return v;
  }
  // A finite number; `positive`: > 0, otherwise ≥ 0.
  double number(const char* key, double fallback, bool positive) {
    auto v = c_.get_double(prefix_ + key, fallback);
    CHORUS_CHECK(std::isfinite(v) && (positive ? v > 0 : v >= 0),
                 "{}{}{} must be finite and {}, got {}", where_, prefix_, key,
                 positive ? "positive" : "not negative", v);
    return v;
  }
  // A fraction in [0, 1) (`closed`: [0, 1]).
  double fraction(const char* key, double fallback, bool closed) {
    auto v = c_.get_double(prefix_ + key, fallback);
    CHORUS_CHECK(v >= 0 && (closed ? v <= 1 : v < 1),
                 "{}{}{} must be in [0, 1{}, got {}", where_, prefix_, key,
                 closed ? "]" : ")", v);
    return v;
  }
  bool flag(const char* key, bool fallback) {
    return c_.get_bool(prefix_ + key, fallback);
  }
  std::string text(const char* key, const std::string& fallback,
                   const std::vector<std::string>& allowed) {
    auto v = c_.get_string(prefix_ + key, fallback);
    CHORUS_CHECK(std::find(allowed.begin(), allowed.end(), v) != allowed.end(),
                 "{}{}{} must be one of {}, got '{}'", where_, prefix_, key,
                 fmt::join(allowed, ", "), v);
    return v;
  }
  std::vector<std::int64_t> widths(const char* key,
                                   std::vector<std::int64_t> fallback) {
    auto v = c_.get_int_array(prefix_ + key, std::move(fallback));
    CHORUS_CHECK(!v.empty() && std::all_of(v.begin(), v.end(),
                                           [](auto w) { return w >= 1; }),
                 "{}{}{} must list at least one width, each at least 1, got "
                 "[{}]",
                 where_, prefix_, key, fmt::join(v, ", "));
    return v;
  }
  std::vector<double> grid(const char* key, std::vector<double> fallback) {
    auto v = c_.get_double_array(prefix_ + key, std::move(fallback));
    CHORUS_CHECK(!v.empty() && std::all_of(v.begin(), v.end(),
                                           [](auto g) {
                                             return std::isfinite(g) && g >= 0;
                                           }),
                 "{}{}{} must list at least one value, each finite and not "
                 "negative, got [{}]",
                 where_, prefix_, key, fmt::join(v, ", "));
    return v;
  }
  // Numbers by name, each finite and positive.
  std::map<std::string, double> costs(const char* key,
                                      std::map<std::string, double> fallback) {
    auto v = c_.get_number_table(prefix_ + key, std::move(fallback));
    for (const auto& [name, cost] : v) {
      CHORUS_CHECK(std::isfinite(cost) && cost > 0,
                   "{}{}{}: the cost of '{}' must be finite and positive, got "
                   "{}",
                   where_, prefix_, key, name, cost);
    }
    return v;
  }
  // A value that a fusion:: parser checks (its message kept).
  template <typename Parse>
  std::string parsed(const char* key, const std::string& fallback,
                     Parse parse) {
    auto v = c_.get_string(prefix_ + key, fallback);
    try {
      parse(v);
    } catch (const Error& e) {
      fail(e.code(), "{}{}{}: {}", where_, prefix_, key, e.what());
    }
    return v;
  }

 private:
  Config& c_;
  std::string prefix_, where_;
};

std::string toml_list(const auto& values) {
  return fmt::format("[{}]", fmt::join(values, ", "));
}

// An inline table of numbers: { "alpha" = 2, "beta" = 1 }.
std::string toml_inline_table(const std::map<std::string, double>& values) {
  std::vector<std::string> entries;
  for (const auto& [name, value] : values)
    entries.push_back(fmt::format("{} = {}", toml_quoted(name), value));
  return entries.empty() ? "{}"
                         : fmt::format("{{ {} }}", fmt::join(entries, ", "));
}

}  // namespace

const std::vector<std::string>& settings_tables() {
  static const std::vector<std::string> tables{"foe", "distill", "frugal",
                                               "tae", "dro"};
  return tables;
}

AlgorithmSettings read_algorithm_settings(Config& c) {
  AlgorithmSettings s;
  {
    Table t(c, "foe");
    auto& f = s.foe;
    f.epochs = t.count("epochs", f.epochs, 1);
    f.hidden = t.widths("hidden", f.hidden);
    f.lr = t.number("lr", f.lr, /*positive=*/true);
    f.batch_size = t.count("batch_size", f.batch_size, 1);
    f.weight_decay = t.number("weight_decay", f.weight_decay, false);
    f.features = t.text("features", f.features, {"logprobs", "probs"});
    f.self_training_rounds =
        t.count("self_training_rounds", f.self_training_rounds, 0);
    f.pseudo_label_confidence = t.fraction(
        "pseudo_label_confidence", f.pseudo_label_confidence, /*closed=*/true);
  }
  {
    Table t(c, "distill");
    auto& d = s.distill;
    d.epochs = t.count("epochs", d.epochs, 1);
    d.lr = t.number("lr", d.lr, /*positive=*/true);
    d.batch_size = t.count("batch_size", d.batch_size, 1);
    d.temperature = t.number("temperature", d.temperature, true);
    d.holdout = t.fraction("holdout", d.holdout, /*closed=*/false);
    d.patience = t.count("patience", d.patience, 1);
  }
  {
    Table t(c, "frugal");
    auto& f = s.frugal;
    f.neighbours = t.count("neighbours", f.neighbours, 1);
    f.knn_k = t.count("knn_k", f.knn_k, 1);
    f.lambda = t.number("lambda", f.lambda, /*positive=*/false);
    f.estimate_on_transfer =
        t.flag("estimate_on_transfer", f.estimate_on_transfer);
    f.costs = t.costs("costs", f.costs);
  }
  {
    Table t(c, "tae");
    auto& a = s.tae;
    a.epochs = t.count("epochs", a.epochs, 1);
    a.conv_channels = t.count("conv_channels", a.conv_channels, 0);
    a.pool_centres = t.count("pool_centres", a.pool_centres, 0);
    a.encoder_shift = t.count("encoder_shift", a.encoder_shift, 0);
    a.answer_weight = t.number("answer_weight", a.answer_weight, false);
    a.readout = t.parsed("readout", a.readout, fusion::parse_tae_readout);
    a.head_steps = t.count("head_steps", a.head_steps, 0);
  }
  {
    Table t(c, "dro");
    auto& d = s.dro;
    d.meta_steps = t.count("meta_steps", d.meta_steps, 1);
    d.meta_lr = t.number("meta_lr", d.meta_lr, /*positive=*/true);
    d.inner_steps = t.count("inner_steps", d.inner_steps, 1);
    d.inner_lr = t.number("inner_lr", d.inner_lr, true);
    d.gammas = t.grid("gammas", d.gammas);
    d.embedding_dim = t.count("embedding_dim", d.embedding_dim, 1);
    d.online = t.flag("online", d.online);
    d.online_steps = t.count("online_steps", d.online_steps, 1);
    d.adapt_steps = t.count("adapt_steps", d.adapt_steps, 0);
    d.adapt_lr = t.number("adapt_lr", d.adapt_lr, true);
  }
  return s;
}

void apply_algorithm_settings(const AlgorithmSettings& s,
                              fusion::AlgorithmOptions& options) {
  const auto features = s.foe.features == "probs"
                            ? fusion::FoeFeatures::kProbs
                            : fusion::FoeFeatures::kLogProbs;
  for (auto* foe : {&options.foe(), &options.frugal().fuser()}) {
    foe->epochs(s.foe.epochs)
        .hidden(s.foe.hidden)
        .lr(s.foe.lr)
        .batch_size(s.foe.batch_size)
        .weight_decay(s.foe.weight_decay)
        .features(features)
        .self_training_rounds(s.foe.self_training_rounds)
        .pseudo_label_confidence(s.foe.pseudo_label_confidence);
  }
  options.distill()
      .epochs(s.distill.epochs)
      .lr(s.distill.lr)
      .batch_size(s.distill.batch_size)
      .temperature(s.distill.temperature)
      .holdout(s.distill.holdout)
      .patience(s.distill.patience);
  options.frugal()
      .neighbours(s.frugal.neighbours)
      .knn_k(s.frugal.knn_k)
      .lambda(s.frugal.lambda)
      .estimate_on_transfer(s.frugal.estimate_on_transfer)
      .costs_by_name(s.frugal.costs);
  auto& tae = options.tae();
  tae.training().epochs(s.tae.epochs);
  tae.training().pool_centres(s.tae.pool_centres);
  tae.training().encoder_shift(s.tae.encoder_shift);
  tae.training().answer_weight(s.tae.answer_weight);
  tae.network().conv_channels(s.tae.conv_channels);
  tae.adaptation().readout(fusion::parse_tae_readout(s.tae.readout));
  tae.adaptation().head_steps(s.tae.head_steps);
  options.dro()
      .meta_steps(s.dro.meta_steps)
      .meta_lr(s.dro.meta_lr)
      .inner_steps(s.dro.inner_steps)
      .inner_lr(s.dro.inner_lr)
      .gammas(s.dro.gammas)
      .embedding_dim(s.dro.embedding_dim)
      .online(s.dro.online)
      .online_steps(s.dro.online_steps)
      .adapt_steps(s.dro.adapt_steps)
      .adapt_lr(s.dro.adapt_lr);
}

std::string settings_toml(const AlgorithmSettings& s,
                          const std::string& table) {
  if (table == "foe") {
    const auto& f = s.foe;
    return fmt::format(
        "[fusion.foe]\nepochs = {}\nhidden = {}\nlr = {}\nbatch_size = {}\n"
        "weight_decay = {}\nfeatures = {}\nself_training_rounds = {}\n"
        "pseudo_label_confidence = {}\n",
        f.epochs, toml_list(f.hidden), f.lr, f.batch_size, f.weight_decay,
        toml_quoted(f.features), f.self_training_rounds,
        f.pseudo_label_confidence);
  }
  if (table == "distill") {
    const auto& d = s.distill;
    return fmt::format(
        "[fusion.distill]\nepochs = {}\nlr = {}\nbatch_size = {}\n"
        "temperature = {}\nholdout = {}\npatience = {}\n",
        d.epochs, d.lr, d.batch_size, d.temperature, d.holdout, d.patience);
  }
  if (table == "frugal") {
    const auto& f = s.frugal;
    return fmt::format(
        "[fusion.frugal]\nneighbours = {}\nknn_k = {}\nlambda = {}\n"
        "estimate_on_transfer = {}\ncosts = {}\n",
        f.neighbours, f.knn_k, f.lambda, f.estimate_on_transfer,
        toml_inline_table(f.costs));
  }
  if (table == "tae") {
    const auto& a = s.tae;
    return fmt::format(
        "[fusion.tae]\nepochs = {}\nconv_channels = {}\npool_centres = {}\n"
        "encoder_shift = {}\nanswer_weight = {}\nreadout = {}\n"
        "head_steps = {}\n",
        a.epochs, a.conv_channels, a.pool_centres, a.encoder_shift,
        a.answer_weight, toml_quoted(a.readout), a.head_steps);
  }
  CHORUS_CHECK(table == "dro", "no settings table [fusion.{}] (tables: {})",
               table, fmt::join(settings_tables(), ", "));
  const auto& d = s.dro;
  return fmt::format(
      "[fusion.dro]\nmeta_steps = {}\nmeta_lr = {}\ninner_steps = {}\n"
      "inner_lr = {}\ngammas = {}\nembedding_dim = {}\nonline = {}\n"
      "online_steps = {}\nadapt_steps = {}\nadapt_lr = {}\n",
      d.meta_steps, d.meta_lr, d.inner_steps, d.inner_lr, toml_list(d.gammas),
      d.embedding_dim, d.online, d.online_steps, d.adapt_steps, d.adapt_lr);
}

std::string settings_line(const AlgorithmSettings& s,
                          const std::string& table) {
  // From the table's TOML: "[fusion.tae]\nepochs = 20\nreadout = \"auto\"\n"
  // reads "tae: epochs 20, readout auto".
  std::istringstream in(settings_toml(s, table));
  std::string line, out = table + ":";
  std::getline(in, line);  // the header
  const char* sep = " ";
  while (std::getline(in, line)) {
    const auto eq = line.find(" = ");
    if (eq == std::string::npos) continue;
    auto value = line.substr(eq + 3);
    if (value.size() >= 2 && value.front() == '"')
      value = value.substr(1, value.size() - 2);
    out += sep + line.substr(0, eq) + " " + value;
    sep = ", ";
  }
  return out;
}

std::vector<std::string> tables_of(const std::string& algorithm) {
  if (algorithm == "foe") return {"foe"};
  if (algorithm == "foe-distill") return {"foe", "distill"};
  if (algorithm == "distill" || algorithm == "foe-select") return {"distill"};
  if (algorithm == "frugal") return {"frugal", "foe"};
  if (algorithm == "tae") return {"tae"};
  if (algorithm == "dro") return {"dro"};
  return {};
}

}  // namespace chorus::coordinator
