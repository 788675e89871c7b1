#include "chorus/coordinator/algorithm_settings.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <sstream>
#include <type_traits>

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

// A value as TOML, by its type.
std::string toml_value(const auto& v) {
  using T = std::decay_t<decltype(v)>;
  if constexpr (std::is_same_v<T, std::string>) {
    return toml_quoted(v);
  } else if constexpr (std::is_same_v<T, std::map<std::string, double>>) {
    return toml_inline_table(v);
  } else if constexpr (requires { v.begin(); }) {
    return toml_list(v);
  } else {
    return fmt::format("{}", v);
  }
}

using S = AlgorithmSettings;
using O = fusion::AlgorithmOptions;

// One key of a [fusion.<table>]: how it is read and checked, written back as
// TOML, and set on the algorithms' options — in one place, so that a key
// cannot be read but not written, or written but not applied.
struct Key {
  const char* table;
  const char* name;
  std::function<void(Table&, S&)> read;
  std::function<std::string(const S&)> toml;
  std::function<void(const S&, O&)> apply;
};

// A key of the settings' field `part.*member`: `read(table, name, current)`
// reads and checks it, `apply(options, value)` sets it.
template <typename Part, typename T, typename Read, typename Apply>
Key key(const char* table, const char* name, Part S::*part, T Part::*member,
        Read read, Apply apply) {
  return Key{
      table,
      name,
      [=](Table& t, S& s) { s.*part.*member = read(t, name, s.*part.*member); },
      [=](const S& s) { return toml_value(s.*part.*member); },
      [=](const S& s, O& o) { apply(o, s.*part.*member); },
  };
}

// The readers, by the check they make.
auto count(std::int64_t least) {
  return [least](Table& t, const char* k, std::int64_t v) {
    return t.count(k, v, least);
  };
}
auto number(bool positive) {
  return [positive](Table& t, const char* k, double v) {
    return t.number(k, v, positive);
  };
}
auto fraction(bool closed) {
  return [closed](Table& t, const char* k, double v) {
    return t.fraction(k, v, closed);
  };
}
auto flag() {
  return [](Table& t, const char* k, bool v) { return t.flag(k, v); };
}
auto one_of(std::vector<std::string> allowed) {
  return [allowed](Table& t, const char* k, const std::string& v) {
    return t.text(k, v, allowed);
  };
}
auto widths() {
  return [](Table& t, const char* k, std::vector<std::int64_t> v) {
    return t.widths(k, std::move(v));
  };
}
auto grid() {
  return [](Table& t, const char* k, std::vector<double> v) {
    return t.grid(k, std::move(v));
  };
}
auto costs() {
  return [](Table& t, const char* k, std::map<std::string, double> v) {
    return t.costs(k, std::move(v));
  };
}
auto readout() {
  return [](Table& t, const char* k, const std::string& v) {
    return t.parsed(k, v, fusion::parse_tae_readout);
  };
}

// [fusion.foe] sets every FoE fuser: foe's and frugal's of each subset.
template <typename Set>
auto each_foe(Set set) {
  return [set](O& o, const auto& v) {
    for (auto* foe : {&o.foe(), &o.frugal().fuser()}) set(*foe, v);
  };
}

using F = fusion::FoeOptions;

const std::vector<Key>& keys() {
  using V = std::int64_t;
  using D = double;
  static const std::vector<Key> all{
      // [fusion.foe]
      key("foe", "epochs", &S::foe, &S::Foe::epochs, count(1),
          each_foe([](F& f, V v) { f.epochs(v); })),
      key("foe", "hidden", &S::foe, &S::Foe::hidden, widths(),
          each_foe([](F& f, const std::vector<V>& v) { f.hidden(v); })),
      key("foe", "lr", &S::foe, &S::Foe::lr, number(true),
          each_foe([](F& f, D v) { f.lr(v); })),
      key("foe", "batch_size", &S::foe, &S::Foe::batch_size, count(1),
          each_foe([](F& f, V v) { f.batch_size(v); })),
      key("foe", "weight_decay", &S::foe, &S::Foe::weight_decay, number(false),
          each_foe([](F& f, D v) { f.weight_decay(v); })),
      key("foe", "features", &S::foe, &S::Foe::features,
          one_of({"logprobs", "probs"}),
          each_foe([](F& f, const std::string& v) {
            f.features(v == "probs" ? fusion::FoeFeatures::kProbs
                                    : fusion::FoeFeatures::kLogProbs);
          })),
      key("foe", "self_training_rounds", &S::foe, &S::Foe::self_training_rounds,
          count(0), each_foe([](F& f, V v) { f.self_training_rounds(v); })),
      key("foe", "pseudo_label_confidence", &S::foe,
          &S::Foe::pseudo_label_confidence, fraction(/*closed=*/true),
          each_foe([](F& f, D v) { f.pseudo_label_confidence(v); })),
      // [fusion.distill]
      key("distill", "epochs", &S::distill, &S::Distill::epochs, count(1),
          [](O& o, V v) { o.distill().epochs(v); }),
      key("distill", "lr", &S::distill, &S::Distill::lr, number(true),
          [](O& o, D v) { o.distill().lr(v); }),
      key("distill", "batch_size", &S::distill, &S::Distill::batch_size,
          count(1), [](O& o, V v) { o.distill().batch_size(v); }),
      key("distill", "temperature", &S::distill, &S::Distill::temperature,
          number(true), [](O& o, D v) { o.distill().temperature(v); }),
      key("distill", "holdout", &S::distill, &S::Distill::holdout,
          fraction(/*closed=*/false),
          [](O& o, D v) { o.distill().holdout(v); }),
      key("distill", "patience", &S::distill, &S::Distill::patience, count(1),
          [](O& o, V v) { o.distill().patience(v); }),
      // [fusion.frugal]
      key("frugal", "neighbours", &S::frugal, &S::Frugal::neighbours, count(1),
          [](O& o, V v) { o.frugal().neighbours(v); }),
      key("frugal", "knn_k", &S::frugal, &S::Frugal::knn_k, count(1),
          [](O& o, V v) { o.frugal().knn_k(v); }),
      key("frugal", "lambda", &S::frugal, &S::Frugal::lambda, number(false),
          [](O& o, D v) { o.frugal().lambda(v); }),
      key("frugal", "estimate_on_transfer", &S::frugal,
          &S::Frugal::estimate_on_transfer, flag(),
          [](O& o, bool v) { o.frugal().estimate_on_transfer(v); }),
      key("frugal", "costs", &S::frugal, &S::Frugal::costs, costs(),
          [](O& o, const fusion::ExpertCosts& v) {
            o.frugal().costs_by_name(v);
          }),
      // [fusion.tae]
      key("tae", "epochs", &S::tae, &S::Tae::epochs, count(1),
          [](O& o, V v) { o.tae().training().epochs(v); }),
      key("tae", "conv_channels", &S::tae, &S::Tae::conv_channels, count(0),
          [](O& o, V v) { o.tae().network().conv_channels(v); }),
      key("tae", "pool_centres", &S::tae, &S::Tae::pool_centres, count(0),
          [](O& o, V v) { o.tae().training().pool_centres(v); }),
      key("tae", "encoder_shift", &S::tae, &S::Tae::encoder_shift, count(0),
          [](O& o, V v) { o.tae().training().encoder_shift(v); }),
      key("tae", "answer_weight", &S::tae, &S::Tae::answer_weight,
          number(false),
          [](O& o, D v) { o.tae().training().answer_weight(v); }),
      key("tae", "readout", &S::tae, &S::Tae::readout, readout(),
          [](O& o, const std::string& v) {
            o.tae().adaptation().readout(fusion::parse_tae_readout(v));
          }),
      key("tae", "head_steps", &S::tae, &S::Tae::head_steps, count(0),
          [](O& o, V v) { o.tae().adaptation().head_steps(v); }),
      key("tae", "covariance_shrinkage", &S::tae, &S::Tae::covariance_shrinkage,
          fraction(/*closed=*/true),
          [](O& o, D v) { o.tae().adaptation().covariance_shrinkage(v); }),
      // [fusion.dro]
      key("dro", "meta_steps", &S::dro, &S::Dro::meta_steps, count(1),
          [](O& o, V v) { o.dro().meta_steps(v); }),
      key("dro", "meta_lr", &S::dro, &S::Dro::meta_lr, number(true),
          [](O& o, D v) { o.dro().meta_lr(v); }),
      key("dro", "inner_steps", &S::dro, &S::Dro::inner_steps, count(1),
          [](O& o, V v) { o.dro().inner_steps(v); }),
      key("dro", "inner_lr", &S::dro, &S::Dro::inner_lr, number(true),
          [](O& o, D v) { o.dro().inner_lr(v); }),
      key("dro", "gammas", &S::dro, &S::Dro::gammas, grid(),
          [](O& o, const std::vector<D>& v) { o.dro().gammas(v); }),
      key("dro", "embedding_dim", &S::dro, &S::Dro::embedding_dim, count(1),
          [](O& o, V v) { o.dro().embedding_dim(v); }),
      key("dro", "online", &S::dro, &S::Dro::online, flag(),
          [](O& o, bool v) { o.dro().online(v); }),
      key("dro", "online_steps", &S::dro, &S::Dro::online_steps, count(1),
          [](O& o, V v) { o.dro().online_steps(v); }),
      key("dro", "adapt_steps", &S::dro, &S::Dro::adapt_steps, count(0),
          [](O& o, V v) { o.dro().adapt_steps(v); }),
      key("dro", "adapt_lr", &S::dro, &S::Dro::adapt_lr, number(true),
          [](O& o, D v) { o.dro().adapt_lr(v); }),
  };
  return all;
}

}  // namespace

const std::vector<std::string>& settings_tables() {
  static const std::vector<std::string> tables{"foe", "distill", "frugal",
                                               "tae", "dro"};
  return tables;
}

AlgorithmSettings read_algorithm_settings(Config& c) {
  AlgorithmSettings s;
  for (const auto& table : settings_tables()) {
    Table t(c, table);
    for (const auto& k : keys())
      if (k.table == table) k.read(t, s);
  }
  return s;
}

void apply_algorithm_settings(const AlgorithmSettings& s,
                              fusion::AlgorithmOptions& options) {
  for (const auto& k : keys()) k.apply(s, options);
}

std::string settings_toml(const AlgorithmSettings& s,
                          const std::string& table) {
  CHORUS_CHECK(std::find(settings_tables().begin(), settings_tables().end(),
                         table) != settings_tables().end(),
               "no settings table [fusion.{}] (tables: {})", table,
               fmt::join(settings_tables(), ", "));
  std::string out = fmt::format("[fusion.{}]\n", table);
  for (const auto& k : keys()) {
    if (k.table == table) out += fmt::format("{} = {}\n", k.name, k.toml(s));
  }
  return out;
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
