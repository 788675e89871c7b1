#include "chorus/fusion/data_files.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/torch.h>
#include <zip.h>
#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <set>
#include <utility>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/datasets.hpp"

namespace chorus::fusion {
namespace fs = std::filesystem;
namespace {

std::string shape_string(at::IntArrayRef s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

std::string lower_extension(const fs::path& p) {
  auto e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return e;
}

torch::ScalarType scalar_type(const NpyArray& a) {
  switch (a.kind) {
    case 'f':
      return a.item_size == 4 ? torch::kFloat32 : torch::kFloat64;
    case 'b':
      return torch::kUInt8;
    case 'u':
      if (a.item_size == 1) return torch::kUInt8;
      // torch has no uint16/32/64 here: widened below.
      return torch::kInt64;
    case 'i':
      switch (a.item_size) {
        case 1:
          return torch::kInt8;
        case 2:
          return torch::kInt16;
        case 4:
          return torch::kInt32;
        default:
          return torch::kInt64;
      }
  }
  return torch::kFloat32;
}

// Reads a whole file (gzip-compressed or not, for IDX and CSV).
std::string read_maybe_gzip(const fs::path& path) {
  auto bytes = read_file(path);
  if (bytes.size() < 2 || static_cast<unsigned char>(bytes[0]) != 0x1f ||
      static_cast<unsigned char>(bytes[1]) != 0x8b) {
    return bytes;
  }
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
    fail(Code::kInternal, "zlib init failed");
  std::string out;
  std::vector<char> buf(1 << 16);
  z.next_in = reinterpret_cast<Bytef*>(bytes.data());
  z.avail_in = static_cast<uInt>(bytes.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = reinterpret_cast<Bytef*>(buf.data());
    z.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&z);
      fail(Code::kDataLoss, "'{}': corrupt or truncated gzip data",
           path.string());
    }
    out.append(buf.data(), buf.size() - z.avail_out);
    if (out.size() > (std::size_t{1} << 32)) {
      inflateEnd(&z);
      fail(Code::kDataLoss, "'{}': more than 4 GiB uncompressed",
           path.string());
    }
  }
  inflateEnd(&z);
  return out;
}

// Labels given as names or indices (text), mapped into the label space.
torch::Tensor labels_from_text(const std::vector<std::string>& cells,
                               const TaskSpec& task,
                               const std::string& origin) {
  std::vector<std::int64_t> out;
  out.reserve(cells.size());
  for (std::size_t i = 0; i < cells.size(); ++i) {
    const auto& c = cells[i];
    if (auto k = task.labels.find(c)) {
      out.push_back(*k);
      continue;
    }
    std::int64_t v = -1;
    auto [end, ec] = std::from_chars(c.data(), c.data() + c.size(), v);
    if (ec == std::errc() && end == c.data() + c.size() && v >= 0 &&
        v < task.labels.size()) {
      out.push_back(v);
      continue;
    }
    fail(Code::kInvalidArgument,
         "'{}': row {}: label '{}' is neither a name of the label space ({}) "
         "nor an "
         "index 0..{}",
         origin, i + 1, c, fmt::join(task.labels.names(), ", "),
         task.labels.size() - 1);
  }
  return torch::tensor(out, torch::kLong);
}

torch::Tensor check_labels(torch::Tensor labels, const TaskSpec& task,
                           const std::string& origin) {
  CHORUS_CHECK(!labels.is_floating_point() && labels.dim() == 1,
               "'{}': labels must be a 1-d integer array, got {} of {}", origin,
               shape_string(labels.sizes()),
               c10::toString(labels.scalar_type()));
  labels = labels.to(torch::kLong).contiguous();
  if (labels.numel() > 0) {
    const auto bad = (labels.lt(0) | labels.ge(task.labels.size())).nonzero();
    if (bad.size(0) > 0) {
      const auto row = bad[0][0].item<std::int64_t>();
      fail(Code::kInvalidArgument,
           "'{}': label {} at position {} is outside the label space (0..{}: "
           "{})",
           origin, labels[row].item<std::int64_t>(), row,
           task.labels.size() - 1, fmt::join(task.labels.names(), ", "));
    }
  }
  return labels;
}

// Inputs as read (any dtype) checked against the task and cast to its dtype.
torch::Tensor check_inputs(torch::Tensor x, const TaskSpec& task,
                           const std::string& origin) {
  const auto& want = task.input_shape;
  if (x.dim() == static_cast<std::int64_t>(want.size()) && want.front() == 1 &&
      x.dim() >= 2) {
    // [N, H, W] for a task of [1, H, W].
    if (x.sizes().slice(1).vec() ==
        std::vector<std::int64_t>(want.begin() + 1, want.end())) {
      x = x.unsqueeze(1);
    }
  }
  std::vector<std::int64_t> expect{x.dim() > 0 ? x.size(0) : 0};
  expect.insert(expect.end(), want.begin(), want.end());
  if (x.dim() == 0 || x.sizes().vec() != expect) {
    fail(Code::kInvalidArgument,
         "'{}': inputs have shape {}, but the task '{}' needs [N, {}] (one "
         "input is [{}])",
         origin, shape_string(x.sizes()), task.name, fmt::join(want, ", "),
         fmt::join(want, ", "));
  }
  CHORUS_CHECK(x.size(0) > 0, "'{}' holds no examples", origin);
  if (task.dtype == InputDType::kUInt8) {
    if (x.scalar_type() == torch::kUInt8) return x.contiguous();
    CHORUS_CHECK(!x.is_floating_point(),
                 "'{}': the task '{}' takes uint8 inputs (0..255), but the "
                 "file holds {}; "
                 "convert it, or declare the task's dtype float32",
                 origin, task.name, c10::toString(x.scalar_type()));
    CHORUS_CHECK((x.ge(0) & x.le(255)).all().item<bool>(),
                 "'{}': integer inputs outside 0..255 for the uint8 task '{}'",
                 origin, task.name);
    return x.to(torch::kUInt8).contiguous();
  }
  x = x.to(torch::kFloat32).contiguous();
  const auto bad = torch::isfinite(x).logical_not().flatten(1).any(1).nonzero();
  if (bad.size(0) > 0) {
    fail(Code::kInvalidArgument,
         "'{}': example {} holds NaN or infinite values", origin,
         bad[0][0].item<std::int64_t>());
  }
  return x;
}

// An image folder: <dir>/<class name>/<image>.
Examples read_image_folder(const fs::path& dir, const TaskSpec& task) {
  CHORUS_CHECK(task.input_shape.size() == 3 &&
                   (task.input_shape[0] == 1 || task.input_shape[0] == 3),
               "'{}' is an image folder, but the task '{}' takes inputs [{}], "
               "not images "
               "[1 or 3, H, W]",
               dir.string(), task.name, fmt::join(task.input_shape, ", "));
  CHORUS_CHECK(
      task.dtype == InputDType::kUInt8,
      "'{}' is an image folder (8-bit images), but the task '{}' takes float32 "
      "inputs; declare dtype = \"uint8\"",
      dir.string(), task.name);
  const auto c = task.input_shape[0], h = task.input_shape[1],
             w = task.input_shape[2];
  std::vector<fs::path> classes;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_directory()) classes.push_back(e.path());
  }
  std::sort(classes.begin(), classes.end());
  CHORUS_CHECK(!classes.empty(),
               "'{}' has no class sub-folders (expected <class name>/*.png)",
               dir.string());
  std::vector<std::uint8_t> pixels;
  std::vector<std::int64_t> labels;
  const auto per_image = static_cast<std::size_t>(c * h * w);
  for (const auto& cls : classes) {
    const auto name = cls.filename().string();
    auto label = task.labels.find(name);
    CHORUS_CHECK(
        label.has_value(),
        "'{}': folder '{}' is not a class of the task '{}' (its labels: {})",
        dir.string(), name, task.name, fmt::join(task.labels.names(), ", "));
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(cls)) {
      if (!e.is_regular_file()) continue;
      const auto ext = lower_extension(e.path());
      if (ext == ".png" || ext == ".jpg" || ext == ".jpeg")
        files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      const auto bytes = read_file(f);
      auto img = decode_image(bytes, c, f.string());
      if (img.height != h || img.width != w) {
        fail(Code::kInvalidArgument,
             "'{}' is {}x{} pixels (width x height), but the task '{}' takes "
             "{}x{} images",
             f.string(), img.width, img.height, task.name, w, h);
      }
      // HWC → CHW.
      const auto at = pixels.size();
      pixels.resize(at + per_image);
      for (std::int64_t y = 0; y < h; ++y)
        for (std::int64_t x = 0; x < w; ++x)
          for (std::int64_t k = 0; k < c; ++k)
            pixels[at + static_cast<std::size_t>((k * h + y) * w + x)] =
                img.pixels[static_cast<std::size_t>((y * w + x) * c + k)];
      labels.push_back(*label);
    }
  }
  const auto n = static_cast<std::int64_t>(labels.size());
  CHORUS_CHECK(n > 0, "'{}': no PNG or JPEG images in its class folders",
               dir.string());
  Examples ex;
  ex.inputs =
      torch::from_blob(pixels.data(), {n, c, h, w}, torch::kUInt8).clone();
  ex.labels = torch::tensor(labels, torch::kLong);
  return ex;
}

torch::Tensor read_label_source(const fs::path& path, const TaskSpec& task) {
  const auto ext = lower_extension(path);
  if (ext == ".txt") {
    const auto text = read_file(path);
    std::vector<std::string> cells;
    std::size_t start = 0;
    while (start < text.size()) {
      auto end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      auto line = text.substr(start, end - start);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) cells.push_back(line);
      start = end + 1;
    }
    return labels_from_text(cells, task, path.string());
  }
  if (ext == ".npy") return check_labels(read_npy(path), task, path.string());
  return check_labels(read_label_file(path), task, path.string());
}

}  // namespace

torch::Tensor to_tensor(const NpyArray& a) {
  const auto type = scalar_type(a);
  auto shape = a.shape;
  if (a.fortran_order) std::reverse(shape.begin(), shape.end());
  torch::Tensor t;
  if (a.kind == 'u' && a.item_size > 1) {
    // Unsigned wider than a byte: widen to int64 element by element.
    std::vector<std::int64_t> v(static_cast<std::size_t>(a.elements()));
    for (std::size_t i = 0; i < v.size(); ++i) {
      std::uint64_t x = 0;
      std::memcpy(&x, a.data.data() + i * a.item_size,
                  static_cast<std::size_t>(a.item_size));
      CHORUS_CHECK_CODE(x <= static_cast<std::uint64_t>(INT64_MAX),
                        Code::kDataLoss, "uint64 value {} does not fit int64",
                        x);
      v[i] = static_cast<std::int64_t>(x);
    }
    t = torch::tensor(v, torch::kLong).reshape(shape);
  } else {
    t = torch::empty(shape, type);
    if (a.elements() > 0)
      std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  }
  if (a.fortran_order && t.dim() > 1) {
    std::vector<std::int64_t> perm(static_cast<std::size_t>(t.dim()));
    for (std::size_t i = 0; i < perm.size(); ++i) {
      perm[i] = static_cast<std::int64_t>(perm.size() - 1 - i);
    }
    t = t.permute(perm).contiguous();
  }
  return t;
}

torch::Tensor read_npy(const fs::path& path) {
  const auto bytes = read_file(path);
  return to_tensor(parse_npy(bytes, path.string()));
}

std::map<std::string, torch::Tensor> read_npz(const fs::path& path) {
  const auto bytes = read_file(path);
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* src =
      zip_source_buffer_create(bytes.data(), bytes.size(), 0, &error);
  if (!src)
    fail(Code::kInternal, "'{}': {}", path.string(),
         zip_error_strerror(&error));
  zip_t* archive =
      zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &error);
  if (!archive) {
    zip_source_free(src);
    std::string why = zip_error_strerror(&error);
    zip_error_fini(&error);
    fail(Code::kDataLoss, "'{}' is not a readable .npz (zip) archive: {}",
         path.string(), why);
  }
  std::unique_ptr<zip_t, decltype(&zip_discard)> guard(archive, &zip_discard);
  std::map<std::string, torch::Tensor> out;
  const auto n = zip_get_num_entries(archive, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(archive, static_cast<zip_uint64_t>(i), 0, &st) != 0) {
      fail(Code::kDataLoss, "'{}': entry {} cannot be read: {}", path.string(),
           i, zip_strerror(archive));
    }
    std::string name = st.name ? st.name : "";
    const auto origin = fmt::format("{}:{}", path.string(), name);
    CHORUS_CHECK_CODE(name.ends_with(".npy"), Code::kDataLoss,
                      "'{}': entry '{}' is not a .npy array", path.string(),
                      name);
    CHORUS_CHECK_CODE(st.size < (std::uint64_t{1} << 34), Code::kDataLoss,
                      "'{}': entry is {} bytes, over the limit", origin,
                      st.size);
    std::string data(static_cast<std::size_t>(st.size), '\0');
    zip_file_t* f = zip_fopen_index(archive, static_cast<zip_uint64_t>(i), 0);
    if (!f) {
      fail(Code::kDataLoss, "'{}': cannot open: {}", origin,
           zip_strerror(archive));
    }
    const auto got = zip_fread(f, data.data(), data.size());
    const bool ok = got == static_cast<zip_int64_t>(data.size());
    std::string why = ok ? "" : zip_file_strerror(f);
    zip_fclose(f);
    CHORUS_CHECK_CODE(ok, Code::kDataLoss,
                      "'{}': corrupt entry (CRC or data): {}", origin, why);
    name.resize(name.size() - 4);
    out[name] = to_tensor(parse_npy(data, origin));
  }
  CHORUS_CHECK_CODE(!out.empty(), Code::kDataLoss, "'{}' holds no arrays",
                    path.string());
  return out;
}

Examples read_examples(const DataRef& ref, const TaskSpec& task,
                       bool need_labels) {
  const auto& path = ref.path;
  std::error_code ec;
  CHORUS_CHECK_CODE(fs::exists(path, ec), Code::kNotFound,
                    "data file '{}' does not exist", path.string());
  const auto origin = path.string();
  const auto ext = lower_extension(path);
  Examples ex;
  bool labels_inline = false;
  if (fs::is_directory(path, ec)) {
    ex = read_image_folder(path, task);
    labels_inline = true;
  } else if (ext == ".npz") {
    auto arrays = read_npz(path);
    auto x = arrays.find("x");
    if (x == arrays.end()) x = arrays.find("inputs");
    if (x == arrays.end()) {
      std::vector<std::string> names;
      for (const auto& [k, v] : arrays) names.push_back(k);
      fail(Code::kInvalidArgument,
           "'{}' has no array 'x' (or 'inputs'); it has: {}", origin,
           fmt::join(names, ", "));
    }
    ex.inputs = x->second;
    auto y = arrays.find("y");
    if (y == arrays.end()) y = arrays.find("labels");
    if (y != arrays.end()) {
      ex.labels = check_labels(y->second, task, origin + ":y");
      labels_inline = true;
    }
  } else if (ext == ".csv" || path.string().ends_with(".csv.gz")) {
    CsvOptions o;
    o.label_column = ref.label_column;
    o.label_optional = !need_labels;
    const auto text = read_maybe_gzip(path);
    auto t = parse_csv(text, o, origin);
    CHORUS_CHECK(
        task.input_elements() == t.cols,
        "'{}' has {} feature columns, but the task '{}' takes inputs of [{}]",
        origin, t.cols, task.name, fmt::join(task.input_shape, ", "));
    std::vector<std::int64_t> shape{t.rows};
    shape.insert(shape.end(), task.input_shape.begin(), task.input_shape.end());
    ex.inputs =
        torch::from_blob(t.features.data(), shape, torch::kFloat32).clone();
    if (task.dtype == InputDType::kUInt8) {
      CHORUS_CHECK((ex.inputs.eq(ex.inputs.round()) & ex.inputs.ge(0) &
                    ex.inputs.le(255))
                       .all()
                       .item<bool>(),
                   "'{}': the task '{}' takes uint8 inputs, but a feature is "
                   "not an integer "
                   "in 0..255",
                   origin, task.name);
      ex.inputs = ex.inputs.to(torch::kUInt8);
    }
    if (!o.label_column.empty() && !t.labels.empty()) {
      ex.labels = labels_from_text(t.labels, task, origin);
      labels_inline = true;
    }
  } else if (ext == ".npy") {
    ex.inputs = read_npy(path);
  } else if (ext == ".pt" || ext == ".pth") {
    ex.inputs = read_image_file(
        path);  // torch.save tensors, as chorus predict reads them.
  } else {
    ex.inputs = read_idx_images(path);
  }
  ex.inputs = check_inputs(ex.inputs, task, origin);
  if (!ref.labels.empty()) {
    CHORUS_CHECK(
        !labels_inline,
        "'{}' holds its own labels; do not also name a label file '{}'", origin,
        ref.labels.string());
    ex.labels = read_label_source(ref.labels, task);
  }
  if (need_labels && !ex.labels.defined()) {
    fail(Code::kInvalidArgument,
         "'{}' has no labels: use an .npz with 'y', a CSV with a label column, "
         "an image "
         "folder, or name a label file",
         origin);
  }
  if (ex.labels.defined()) {
    CHORUS_CHECK(ex.labels.size(0) == ex.inputs.size(0),
                 "'{}': {} inputs but {} labels", origin, ex.inputs.size(0),
                 ex.labels.size(0));
  }
  log::get("fusion")->debug(
      "event=read_examples path={} n={} shape={} labelled={}", origin,
      ex.size(), shape_string(ex.inputs.sizes()), ex.labelled());
  return ex;
}

namespace {

// The task's mean and std shaped to broadcast over a batch [N, input...];
// nullopt without a normalisation.
std::optional<std::pair<torch::Tensor, torch::Tensor>> normalisation_of(
    const TaskSpec& task) {
  if (task.normalisation == Normalisation::kNone || task.mean.empty())
    return std::nullopt;
  std::vector<std::int64_t> shape{1};
  if (task.normalisation == Normalisation::kPerChannel) {
    shape.push_back(task.input_shape.front());
    for (std::size_t i = 1; i < task.input_shape.size(); ++i)
      shape.push_back(1);
  } else {
    shape.insert(shape.end(), task.input_shape.begin(), task.input_shape.end());
  }
  auto m = torch::tensor(task.mean, torch::kFloat64)
               .to(torch::kFloat32)
               .reshape(shape);
  auto s = torch::tensor(task.std, torch::kFloat64)
               .to(torch::kFloat32)
               .reshape(shape);
  return std::pair{m, s};
}

}  // namespace

torch::Tensor to_model_inputs(const torch::Tensor& raw, const TaskSpec& task) {
  std::vector<std::int64_t> want{raw.dim() > 0 ? raw.size(0) : 0};
  want.insert(want.end(), task.input_shape.begin(), task.input_shape.end());
  CHORUS_CHECK(
      raw.sizes().vec() == want,
      "inputs of shape {} do not fit the task '{}' (one input is [{}])",
      shape_string(raw.sizes()), task.name, fmt::join(task.input_shape, ", "));
  auto x = raw.scalar_type() == torch::kUInt8
               ? raw.to(torch::kFloat32).div_(255.0)
               : raw.to(torch::kFloat32);
  if (auto n = normalisation_of(task)) return (x - n->first) / n->second;
  return x;
}

torch::Tensor to_wire_inputs(const torch::Tensor& model_inputs,
                             const TaskSpec& task) {
  auto x = model_inputs.to(torch::kFloat32);
  if (auto n = normalisation_of(task)) x = x * n->second + n->first;
  if (task.dtype == InputDType::kUInt8) {
    return x.mul(255.0).round_().clamp_(0, 255).to(torch::kUInt8).contiguous();
  }
  return x.contiguous();
}

void fit_normalisation(TaskSpec& task, const torch::Tensor& raw) {
  if (!task.needs_statistics()) return;
  auto x = raw.scalar_type() == torch::kUInt8
               ? raw.to(torch::kFloat64).div(255.0)
               : raw.to(torch::kFloat64);
  torch::Tensor mean, std;
  if (task.normalisation == Normalisation::kPerChannel) {
    auto per = x.transpose(0, 1).flatten(1);  // [C, N·rest]
    mean = per.mean(1);
    std = per.std(1, /*unbiased=*/false);
  } else {
    auto flat = x.flatten(1);
    mean = flat.mean(0);
    std = flat.std(0, /*unbiased=*/false);
  }
  std = torch::where(std.gt(1e-12), std, torch::ones_like(std));
  task.mean.assign(mean.data_ptr<double>(),
                   mean.data_ptr<double>() + mean.numel());
  task.std.assign(std.data_ptr<double>(), std.data_ptr<double>() + std.numel());
  task.validate();
}

// --- built-in sources -------------------------------------------------------

namespace {

struct SklearnSet {
  const char* name;
  const char* file;
};
constexpr SklearnSet kSklearn[] = {{"breast-cancer", "breast_cancer.csv"},
                                   {"wine", "wine_data.csv"},
                                   {"iris", "iris.csv"},
                                   {"digits", "digits.csv.gz"}};

// scikit-learn's own CSV layout: a first row "n_samples,n_features,names..."
// (digits: no such row, 64 features and the digit), then features and the
// class index.
BuiltinData load_sklearn(const std::string& name, const fs::path& dir) {
  const auto* set =
      std::find_if(std::begin(kSklearn), std::end(kSklearn),
                   [&](const SklearnSet& s) { return name == s.name; });
  const auto path = dir / set->file;
  std::error_code ec;
  CHORUS_CHECK_CODE(
      fs::is_regular_file(path, ec), Code::kNotFound,
      "'{}' is missing: the '{}' data set ships with the Debian package "
      "python3-sklearn (scripts/install-deps.sh installs it)",
      path.string(), name);
  const auto text = read_maybe_gzip(path);
  BuiltinData d;
  d.task.name = name;
  d.task.dtype = InputDType::kFloat32;
  d.task.normalisation = Normalisation::kPerFeature;
  std::vector<std::string> labels;
  std::int64_t features = 0, declared = -1;
  std::size_t start = 0;
  if (name == "digits") {
    features = 64;
    for (int k = 0; k < 10; ++k) labels.push_back(std::to_string(k));
  } else {
    const auto eol = text.find('\n');
    std::vector<std::string> head;
    std::string cell;
    for (char c : text.substr(0, eol)) {
      if (c == ',') {
        head.push_back(cell);
        cell.clear();
      } else if (c != '\r') {
        cell.push_back(c);
      }
    }
    head.push_back(cell);
    CHORUS_CHECK_CODE(head.size() >= 4, Code::kDataLoss,
                      "'{}': unexpected first row", path.string());
    declared = std::stoll(head[0]);
    features = std::stoll(head[1]);
    labels.assign(head.begin() + 2, head.end());
    start = eol + 1;
  }
  d.task.labels = LabelSpace(labels);
  d.task.input_shape = {features};
  // Re-use the strict CSV parser: give the rows a header.
  std::string csv;
  for (std::int64_t i = 0; i < features; ++i) csv += fmt::format("f{},", i);
  csv += "label\n";
  csv.append(text, start);
  auto t = parse_csv(csv, CsvOptions{}, path.string());
  CHORUS_CHECK_CODE(t.cols == features && (declared < 0 || t.rows == declared),
                    Code::kDataLoss,
                    "'{}': {} rows of {} features, expected {} of {}",
                    path.string(), t.rows, t.cols, declared, features);
  auto x =
      torch::from_blob(t.features.data(), {t.rows, features}, torch::kFloat32)
          .clone();
  auto y = labels_from_text(t.labels, d.task, path.string());
  // A fixed split: a sixth of the examples, stratified by a seeded shuffle.
  auto gen = at::detail::createCPUGenerator(/*seed_val=*/20261202);
  auto order = torch::randperm(t.rows, gen, torch::kLong);
  const auto n_test = t.rows / 6;
  auto test_idx = order.slice(0, 0, n_test), train_idx = order.slice(0, n_test);
  d.train =
      Examples{x.index_select(0, train_idx), y.index_select(0, train_idx)};
  d.test = Examples{x.index_select(0, test_idx), y.index_select(0, test_idx)};
  return d;
}

}  // namespace

const std::vector<std::string>& builtin_sources() {
  static const std::vector<std::string> kNames = {
      "fashion-mnist", "mnist", "breast-cancer", "wine", "iris", "digits"};
  return kNames;
}

bool is_builtin_source(const std::string& name) {
  const auto& n = builtin_sources();
  return std::find(n.begin(), n.end(), name) != n.end();
}

TaskSpec builtin_task(const std::string& name) {
  if (name == "fashion-mnist") return fashion_mnist_task();
  if (name == "mnist") {
    auto t = fashion_mnist_task();
    t.name = "mnist";
    std::vector<std::string> digits;
    for (int k = 0; k < 10; ++k) digits.push_back(std::to_string(k));
    t.labels = LabelSpace(digits);
    return t;
  }
  return load_builtin(name).task;
}

BuiltinData load_builtin(const std::string& name,
                         const std::optional<fs::path>& dir) {
  CHORUS_CHECK(is_builtin_source(name), "unknown data set '{}' (built in: {})",
               name, fmt::join(builtin_sources(), ", "));
  if (name == "fashion-mnist") {
    const auto d = fashion_mnist_dir(dir);
    auto locate = [&](const std::string& stem) {
      std::error_code ec;
      for (auto p : {d / (stem + ".gz"), d / stem}) {
        if (fs::is_regular_file(p, ec)) return p;
      }
      fail(Code::kNotFound,
           "Fashion-MNIST not found: '{}' is missing; install the Debian "
           "package "
           "dataset-fashion-mnist (scripts/install-deps.sh) or set data_dir",
           (d / (stem + ".gz")).string());
    };
    BuiltinData b;
    b.task = fashion_mnist_task();
    b.train = Examples{
        read_idx_images(locate("train-images-idx3-ubyte")).unsqueeze(1),
        read_idx_labels(locate("train-labels-idx1-ubyte"))};
    b.test =
        Examples{read_idx_images(locate("t10k-images-idx3-ubyte")).unsqueeze(1),
                 read_idx_labels(locate("t10k-labels-idx1-ubyte"))};
    return b;
  }
  if (name == "mnist") {
    BuiltinData b;
    b.task = builtin_task("mnist");
    auto all = load_mnist_digits(dir);
    auto x = all.images.mul(255.0).round_().clamp_(0, 255).to(torch::kUInt8);
    auto gen = at::detail::createCPUGenerator(/*seed_val=*/20261202);
    auto order = torch::randperm(all.size(), gen, torch::kLong);
    const auto n_test = all.size() / 6;
    auto test_idx = order.slice(0, 0, n_test),
         train_idx = order.slice(0, n_test);
    b.train = Examples{x.index_select(0, train_idx),
                       all.labels.index_select(0, train_idx)};
    b.test = Examples{x.index_select(0, test_idx),
                      all.labels.index_select(0, test_idx)};
    return b;
  }
  return load_sklearn(name, dir.value_or(fs::path(kSklearnDataDir)));
}

}  // namespace chorus::fusion
