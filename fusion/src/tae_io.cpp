#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/archive.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/tae.hpp"
#include "tae_internal.hpp"

namespace chorus::fusion {
namespace {

// The format tag and version of `TaeModel::save`'s file: named fields
// ("dims.*", "network.*", "adaptation.*"). Version 1 ("chorus.tae.v1",
// positional tensors) is still read.
constexpr const char* kTaeFormat = "chorus.tae";
constexpr std::int64_t kTaeVersion = 2;
constexpr const char* kTaeFormatV1 = "chorus.tae.v1";

}  // namespace

using tae_internal::clamp_logvar;

TaeTask TaeModel::read_adapted_task(const std::filesystem::path& path) const {
  const auto text = read_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(Code::kDataLoss, "'{}' is not JSON: {}", path.string(), e.what());
  }
  TaeTask task;
  task.source = path.string();
  std::vector<double> mean, logvar;
  try {
    CHORUS_CHECK_CODE(
        j.is_object() && j.value("algorithm", "") == "tae", Code::kDataLoss,
        "'{}' is not a tae adaptation (adapted.json of chorus node adapt)",
        path.string());
    task.classes = j.at("outputs").get<std::vector<std::int64_t>>();
    mean = j.at("mean").get<std::vector<double>>();
    logvar = j.at("logvar").get<std::vector<double>>();
    // A matrix written as JSON rows of `width` values each (0: as long as
    // the first row).
    auto matrix = [&](const char* key, std::size_t width) {
      auto rows = j.at(key).get<std::vector<std::vector<double>>>();
      if (width == 0 && !rows.empty()) width = rows.front().size();
      std::vector<float> flat;
      for (const auto& r : rows) {
        CHORUS_CHECK_CODE(r.size() == width, Code::kDataLoss,
                          "'{}': a row of {} has {} values, expected {}",
                          path.string(), key, r.size(), width);
        flat.insert(flat.end(), r.begin(), r.end());
      }
      return torch::tensor(flat).reshape(
          {static_cast<std::int64_t>(rows.size()),
           static_cast<std::int64_t>(width)});
    };
    if (j.contains("votes")) task.votes = matrix("votes", task.classes.size());
    if (j.contains("head_weight") || j.contains("head_bias")) {
      task.head_weight = matrix("head_weight", 0);
      auto bias = j.at("head_bias").get<std::vector<double>>();
      task.head_bias =
          torch::tensor(std::vector<float>(bias.begin(), bias.end()));
    }
  } catch (const nlohmann::json::exception& e) {
    fail(Code::kDataLoss, "'{}': {}", path.string(), e.what());
  }
  const auto w_dim = net_->w_dim;
  CHORUS_CHECK(static_cast<std::int64_t>(mean.size()) == w_dim &&
                   static_cast<std::int64_t>(logvar.size()) == w_dim,
               "'{}': the embedding has {} values, this model's w has {}",
               path.string(), mean.size(), w_dim);
  CHORUS_CHECK(task.classes.size() >= 2,
               "'{}': a task needs at least 2 classes, got {}", path.string(),
               task.classes.size());
  for (auto c : task.classes) {
    CHORUS_CHECK(c >= 0 && c < net_->outputs,
                 "'{}': class {} is not one of this model's {} outputs",
                 path.string(), c, net_->outputs);
  }
  task.q.mean = torch::tensor(std::vector<float>(mean.begin(), mean.end()));
  task.q.logvar = clamp_logvar(
      torch::tensor(std::vector<float>(logvar.begin(), logvar.end())));
  CHORUS_CHECK(torch::isfinite(task.q.mean).all().item<bool>() &&
                   torch::isfinite(task.q.logvar).all().item<bool>(),
               "'{}': the embedding holds NaN or Inf", path.string());
  if (task.votes.defined()) {
    CHORUS_CHECK(task.votes.size(0) == prototypes_.size(0),
                 "'{}': votes for {} prototypes, this model has {} (adapted "
                 "from another "
                 "global model?)",
                 path.string(), task.votes.size(0), prototypes_.size(0));
    CHORUS_CHECK(torch::isfinite(task.votes).all().item<bool>() &&
                     task.votes.min().item<float>() >= 0,
                 "'{}': votes must be finite and non-negative", path.string());
    task.votes = normalise_rows(task.votes);
  }
  try {
    check_head(task, "'" + path.string() + "'");
  } catch (const Error& e) {
    fail(Code::kDataLoss, "{}", e.what());
  }
  return task;
}

bool TaeModel::is_model_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path.string());
    c10::IValue format;
    if (!archive.try_read("format", format)) return false;
    return format.isString() && (format.toStringRef() == kTaeFormat ||
                                 format.toStringRef() == kTaeFormatV1);
  } catch (const std::exception&) {
    return false;
  }
}

void TaeModel::save(const std::filesystem::path& path) const {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kTaeFormat)));
  archive.write("version", c10::IValue(kTaeVersion));
  auto put = [&](const char* key, c10::IValue value) {
    archive.write(key, value);
  };
  put("dims.input", net_->input_dim);
  put("dims.outputs", net_->outputs);
  put("dims.task", net_->task_dim);
  const auto& n = options_.network();
  put("network.w_dim", n.w_dim());
  put("network.z_dim", n.z_dim());
  put("network.hidden", n.hidden());
  put("network.prototypes", n.prototypes());
  put("network.input_encoder", n.input_encoder());
  put("network.answer_encoder", n.answer_encoder());
  // The trunk the model has (none convolutional: 0 and no shape).
  put("network.conv_channels", net_->conv_channels);
  if (net_->conv_encoders()) {
    archive.write("network.image_shape",
                  torch::tensor(net_->image_shape, torch::kLong),
                  /*is_buffer=*/true);
  }
  const auto& a = options_.adaptation();
  put("adaptation.samples", a.samples());
  put("adaptation.delta", a.delta());
  put("adaptation.likelihood_scale", a.likelihood_scale());
  put("adaptation.steps", a.steps());
  put("adaptation.lr", a.lr());
  put("adaptation.relabel", a.relabel());
  put("adaptation.relabel_prior", a.relabel_prior());
  put("adaptation.readout", to_string(a.readout()));
  put("adaptation.head_steps", a.head_steps());
  put("adaptation.unlabelled_rounds", a.unlabelled_rounds());
  put("adaptation.unlabelled_temperature", a.unlabelled_temperature());
  put("adaptation.unlabelled_weight", a.unlabelled_weight());
  put("adaptation.centre_weight", a.centre_weight());
  put("adaptation.centre_temperature", a.centre_temperature());
  put("adaptation.covariance_shrinkage", a.covariance_shrinkage());
  if (centres_.defined())
    archive.write("pool_centres", centres_, /*is_buffer=*/true);
  if (covariance_.defined())
    archive.write("pool_covariance", covariance_, /*is_buffer=*/true);
  archive.write("prototypes", prototypes_, /*is_buffer=*/true);
  archive.write("known_outputs", known_, /*is_buffer=*/true);
  std::string names;
  for (const auto& l : labels_) names += l + "\n";
  archive.write("labels", c10::IValue(names));
  torch::serialize::OutputArchive tensors;
  for (const auto& item : net_->named_parameters()) {
    tensors.write("param." + item.key(), item.value().detach(), true);
  }
  for (const auto& item : net_->named_buffers()) {
    tensors.write("buffer." + item.key(), item.value(), true);
  }
  archive.write("tensors", tensors);
  if (default_task_) {
    // Optional fields: files without them predict with the prior.
    archive.write("default.mean", default_task_->q.mean, true);
    archive.write("default.logvar", default_task_->q.logvar, true);
    if (default_task_->votes.defined())
      archive.write("default.votes", default_task_->votes, true);
    if (default_task_->head_weight.defined()) {
      archive.write("default.head_weight", default_task_->head_weight, true);
      archive.write("default.head_bias", default_task_->head_bias, true);
    }
    archive.write("default.source", c10::IValue(default_task_->source));
  }
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomic(path, std::move(bytes).str());
}

namespace {

// The dimensions and saved options of a tae file.
struct TaeHeader {
  std::int64_t input = 0, outputs = 0, task = 0;
  TaeOptions options;
};

// Version 2: one named field each.
TaeHeader read_header(torch::serialize::InputArchive& archive,
                      const std::filesystem::path& path) {
  auto field = [&](const char* key) {
    c10::IValue v;
    CHORUS_CHECK_CODE(archive.try_read(key, v), Code::kDataLoss,
                      "tae model '{}' has no field '{}'", path.string(), key);
    return v;
  };
  auto integer = [&](const char* key) {
    auto v = field(key);
    CHORUS_CHECK_CODE(v.isInt() && v.toInt() > 0, Code::kDataLoss,
                      "tae model '{}': field '{}' must be a positive integer",
                      path.string(), key);
    return v.toInt();
  };
  auto real = [&](const char* key) {
    auto v = field(key);
    CHORUS_CHECK_CODE(v.isDouble() && std::isfinite(v.toDouble()),
                      Code::kDataLoss,
                      "tae model '{}': field '{}' must be a finite number",
                      path.string(), key);
    return v.toDouble();
  };
  auto boolean_of = [&](const c10::IValue& v, const char* key) {
    CHORUS_CHECK_CODE(v.isBool(), Code::kDataLoss,
                      "tae model '{}': field '{}' must be true or false",
                      path.string(), key);
    return v.toBool();
  };
  auto boolean = [&](const char* key) { return boolean_of(field(key), key); };
  TaeHeader h;
  h.input = integer("dims.input");
  h.outputs = integer("dims.outputs");
  h.task = integer("dims.task");
  h.options.network()
      .w_dim(integer("network.w_dim"))
      .z_dim(integer("network.z_dim"))
      .hidden(integer("network.hidden"))
      .prototypes(integer("network.prototypes"));
  h.options.adaptation()
      .samples(integer("adaptation.samples"))
      .delta(real("adaptation.delta"))
      .likelihood_scale(real("adaptation.likelihood_scale"))
      .steps(integer("adaptation.steps"))
      .lr(real("adaptation.lr"))
      .relabel(boolean("adaptation.relabel"))
      .relabel_prior(real("adaptation.relabel_prior"));
  // Written since the input encoder and the features readout; files before
  // them have neither and read out by prototypes.
  c10::IValue v;
  h.options.network().input_encoder(
      archive.try_read("network.input_encoder", v) &&
      boolean_of(v, "network.input_encoder"));
  // Written since the answer encoder; files before it have none.
  h.options.network().answer_encoder(
      archive.try_read("network.answer_encoder", v) &&
      boolean_of(v, "network.answer_encoder"));
  h.options.adaptation().readout(TaeReadout::kPrototypes);
  if (archive.try_read("adaptation.readout", v)) {
    CHORUS_CHECK_CODE(v.isString(), Code::kDataLoss,
                      "tae model '{}': field 'adaptation.readout' must be a "
                      "string",
                      path.string());
    try {
      h.options.adaptation().readout(parse_tae_readout(v.toStringRef()));
    } catch (const Error& e) {
      fail(Code::kDataLoss, "tae model '{}': {}", path.string(), e.what());
    }
  }
  // Optional fields: files written before them take `fallback`.
  auto count = [&](const char* key, std::int64_t fallback) {
    if (!archive.try_read(key, v)) return fallback;
    CHORUS_CHECK_CODE(v.isInt() && v.toInt() >= 0, Code::kDataLoss,
                      "tae model '{}': field '{}' must be a non-negative "
                      "integer",
                      path.string(), key);
    return v.toInt();
  };
  auto non_negative = [&](const char* key, double fallback) {
    if (!archive.try_read(key, v)) return fallback;
    CHORUS_CHECK_CODE(
        v.isDouble() && std::isfinite(v.toDouble()) && v.toDouble() >= 0,
        Code::kDataLoss,
        "tae model '{}': field '{}' must be a finite, "
        "non-negative number",
        path.string(), key);
    return v.toDouble();
  };
  // Written since the convolutional trunk; files before it have none.
  h.options.network().conv_channels(count("network.conv_channels", 0));
  if (h.options.network().conv_channels() > 0) {
    torch::Tensor shape;
    CHORUS_CHECK_CODE(archive.try_read("network.image_shape", shape, true) &&
                          shape.dim() == 1 && shape.numel() == 3 &&
                          shape.scalar_type() == torch::kLong &&
                          shape[0].item<std::int64_t>() >= 1 &&
                          shape.slice(0, 1).min().item<std::int64_t>() >= 4 &&
                          shape.prod().item<std::int64_t>() == h.input,
                      Code::kDataLoss,
                      "tae model '{}': a convolutional trunk needs field "
                      "'network.image_shape', [C, H, W] with H and W at least "
                      "4 and C·H·W = the input size {}",
                      path.string(), h.input);
    h.options.network().image_shape({shape[0].item<std::int64_t>(),
                                     shape[1].item<std::int64_t>(),
                                     shape[2].item<std::int64_t>()});
  }
  auto& a = h.options.adaptation();
  a.head_steps(count("adaptation.head_steps", a.head_steps()));
  // Written since the refinement over unlabelled inputs.
  a.unlabelled_rounds(
      count("adaptation.unlabelled_rounds", a.unlabelled_rounds()));
  a.unlabelled_temperature(non_negative("adaptation.unlabelled_temperature",
                                        a.unlabelled_temperature()));
  a.unlabelled_weight(
      non_negative("adaptation.unlabelled_weight", a.unlabelled_weight()));
  // Written since the pool's centres (files before them have none).
  a.centre_weight(non_negative("adaptation.centre_weight", a.centre_weight()));
  a.centre_temperature(
      non_negative("adaptation.centre_temperature", a.centre_temperature()));
  // Written since the pool's covariance (files before it: the nearest
  // class mean, as they were trained to be read).
  a.covariance_shrinkage(non_negative("adaptation.covariance_shrinkage", 1.0));
  CHORUS_CHECK_CODE(a.covariance_shrinkage() <= 1, Code::kDataLoss,
                    "tae model '{}': adaptation.covariance_shrinkage must be "
                    "in [0, 1], got {}",
                    path.string(), a.covariance_shrinkage());
  return h;
}

// Version 1 ("chorus.tae.v1"): positional "dims" and "scalars" tensors.
TaeHeader read_header_v1(torch::serialize::InputArchive& archive,
                         const std::filesystem::path& path) {
  torch::Tensor dims, scalars;
  archive.read("dims", dims, true);
  archive.read("scalars", scalars, true);
  CHORUS_CHECK_CODE(dims.dim() == 1 && dims.numel() == 8 &&
                        dims.scalar_type() == torch::kLong,
                    Code::kDataLoss, "'{}': bad dims", path.string());
  // 4 scalars in files written before prototype relabelling (which then
  // takes its defaults), 6 since.
  CHORUS_CHECK_CODE(scalars.dim() == 1 &&
                        scalars.scalar_type() == torch::kDouble &&
                        (scalars.numel() == 4 || scalars.numel() == 6),
                    Code::kDataLoss, "'{}': bad scalars", path.string());
  auto d = dims.accessor<std::int64_t, 1>();
  auto sc = scalars.accessor<double, 1>();
  TaeHeader h;
  h.input = d[0];
  h.outputs = d[1];
  h.task = d[2];
  h.options.network().w_dim(d[3]).z_dim(d[4]).hidden(d[5]).prototypes(d[6]);
  auto& a = h.options.adaptation();
  a.samples(d[7]).delta(sc[0]).lr(sc[1]).steps(
      static_cast<std::int64_t>(sc[2]));
  a.likelihood_scale(sc[3]);
  if (scalars.numel() == 6) a.relabel(sc[4] != 0).relabel_prior(sc[5]);
  h.options.network().input_encoder(false).answer_encoder(false);
  a.readout(TaeReadout::kPrototypes);
  return h;
}

}  // namespace

TaeModel TaeModel::load(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    fail(Code::kNotFound, "tae model '{}' does not exist", path.string());
  }
  try {
    // The zip's checksums first: libtorch would read altered bytes.
    std::istringstream in(read_verified_archive(path));
    torch::serialize::InputArchive archive;
    archive.load_from(in);
    c10::IValue format;
    archive.read("format", format);
    const bool v1 = format.isString() && format.toStringRef() == kTaeFormatV1;
    CHORUS_CHECK_CODE(
        v1 || (format.isString() && format.toStringRef() == kTaeFormat),
        Code::kDataLoss, "'{}' is not a chorus tae model", path.string());
    if (!v1) {
      c10::IValue version;
      CHORUS_CHECK_CODE(archive.try_read("version", version) && version.isInt(),
                        Code::kDataLoss, "tae model '{}' has no version",
                        path.string());
      CHORUS_CHECK_CODE(version.toInt() == kTaeVersion, Code::kDataLoss,
                        "tae model '{}' is version {}; this chorus reads "
                        "versions 1 and {}",
                        path.string(), version.toInt(), kTaeVersion);
    }
    const auto h =
        v1 ? read_header_v1(archive, path) : read_header(archive, path);
    torch::Tensor prototypes;
    archive.read("prototypes", prototypes, true);
    TaeModel model(h.input, h.outputs, h.task, h.options);
    torch::serialize::InputArchive tensors;
    archive.read("tensors", tensors);
    torch::NoGradGuard no_grad;
    auto restore = [&](const std::string& prefix, auto items) {
      for (auto& item : items) {
        torch::Tensor t;
        tensors.read(prefix + item.key(), t, true);
        CHORUS_CHECK_CODE(t.sizes() == item.value().sizes(), Code::kDataLoss,
                          "'{}': {} has the wrong shape", path.string(),
                          item.key());
        item.value().copy_(t);
      }
    };
    restore("param.", model.net_->named_parameters());
    restore("buffer.", model.net_->named_buffers());
    CHORUS_CHECK_CODE(prototypes.sizes() == model.prototypes_.sizes(),
                      Code::kDataLoss, "'{}': prototypes have the wrong shape",
                      path.string());
    model.prototypes_ = prototypes.clone();
    if (torch::Tensor known; archive.try_read("known_outputs", known, true)) {
      CHORUS_CHECK_CODE(known.scalar_type() == torch::kBool &&
                            known.numel() == model.outputs(),
                        Code::kDataLoss,
                        "'{}': known_outputs must be {} booleans",
                        path.string(), model.outputs());
      model.known_ = known.reshape({-1}).clone();
    }
    if (torch::Tensor centres;
        archive.try_read("pool_centres", centres, true)) {
      CHORUS_CHECK_CODE(centres.dim() == 2 && centres.size(0) >= 1 &&
                            centres.size(1) == model.feature_dim() &&
                            centres.scalar_type() == torch::kFloat32 &&
                            torch::isfinite(centres).all().item<bool>(),
                        Code::kDataLoss,
                        "'{}': pool_centres must be finite floats [K, {}]",
                        path.string(), model.feature_dim());
      model.centres_ = centres.clone();
    }
    if (torch::Tensor cov; archive.try_read("pool_covariance", cov, true)) {
      const auto dim = model.feature_dim();
      CHORUS_CHECK_CODE(
          model.centres_.defined() && cov.dim() == 2 && cov.size(0) == dim &&
              cov.size(1) == dim && cov.scalar_type() == torch::kFloat32 &&
              torch::isfinite(cov).all().item<bool>() &&
              torch::allclose(cov, cov.t(), 1e-5, 1e-7) &&
              cov.diagonal().min().item<double>() >= 0,
          Code::kDataLoss,
          "'{}': pool_covariance must be a symmetric finite float [{}, {}] "
          "with non-negative variances, beside pool_centres",
          path.string(), dim, dim);
      model.covariance_ = cov.clone();
    }
    c10::IValue names;
    archive.read("labels", names);
    CHORUS_CHECK_CODE(names.isString(), Code::kDataLoss,
                      "'{}': labels must be a string", path.string());
    std::istringstream lines(names.toStringRef());
    for (std::string l; std::getline(lines, l);) model.labels_.push_back(l);
    if (torch::Tensor mean; archive.try_read("default.mean", mean, true)) {
      TaeTask task;
      task.q.mean = mean;
      archive.read("default.logvar", task.q.logvar, true);
      torch::Tensor votes;
      if (archive.try_read("default.votes", votes, true)) task.votes = votes;
      torch::Tensor head_weight;
      if (archive.try_read("default.head_weight", head_weight, true)) {
        task.head_weight = head_weight;
        archive.read("default.head_bias", task.head_bias, true);
      }
      c10::IValue source;
      archive.read("default.source", source);
      CHORUS_CHECK_CODE(source.isString(), Code::kDataLoss,
                        "'{}': default.source must be a string", path.string());
      task.source = source.toStringRef();
      CHORUS_CHECK_CODE(torch::isfinite(task.q.mean).all().item<bool>() &&
                            torch::isfinite(task.q.logvar).all().item<bool>() &&
                            (!task.votes.defined() ||
                             torch::isfinite(task.votes).all().item<bool>()),
                        Code::kDataLoss,
                        "'{}': the default task holds NaN or Inf",
                        path.string());
      try {
        model.set_default_task(std::move(task));
      } catch (const Error& e) {
        fail(Code::kDataLoss, "'{}': {}", path.string(), e.what());
      }
    }
    model.net_->eval();
    return model;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(Code::kDataLoss, "cannot read tae model '{}': {}", path.string(),
         e.what());
  }
}

}  // namespace chorus::fusion
