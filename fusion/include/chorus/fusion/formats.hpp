#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

/// Parsers of the data formats people have, over bytes in memory: NumPy
/// `.npy`, CSV with a header, PNG and JPEG images. No torch and no files
/// here, so each parser can be fuzzed alone (tests/fuzz/); `data_files.hpp`
/// turns their results into tensors checked against a task. Every parser
/// validates before it allocates and throws `chorus::Error` (DATA_LOSS for
/// bytes that are not the format, INVALID_ARGUMENT for values a task cannot
/// take) with a message naming `origin` and the position.
namespace chorus::fusion {

/// A parsed `.npy` array: a view into the bytes it was parsed from.
struct NpyArray {
  /// 'f' floating point, 'i' signed integer, 'u' unsigned integer, 'b' bool.
  char kind = 'f';
  /// Bytes per element.
  int item_size = 4;
  /// Whether the elements are stored column-major (`fortran_order`).
  bool fortran_order = false;
  /// The array's shape ([] for a scalar).
  std::vector<std::int64_t> shape;
  /// The elements, little-endian, exactly prod(shape) × item_size bytes.
  std::string_view data;

  /// prod(shape).
  std::int64_t elements() const;
  /// The descr, e.g. "<f4".
  std::string descr() const;
};

/// Parses a NumPy `.npy` file (format versions 1.0, 2.0 and 3.0): the magic,
/// the header dict (`descr`, `fortran_order`, `shape`), and a payload of
/// exactly the declared size. Accepts little-endian or byte-sized bool, int,
/// uint and float elements of 1, 2, 4 or 8 bytes (float: 4 or 8); refuses
/// big-endian, object and structured arrays naming the descr. At most
/// `max_elements` elements.
NpyArray parse_npy(std::string_view bytes, std::string_view origin,
                   std::int64_t max_elements = std::int64_t{1} << 31);

/// How to read a CSV file.
struct CsvOptions {
  /// The column holding the label (a name of the label space, or its
  /// index); empty: the file has no label column (every column a feature).
  std::string label_column = "label";
  /// A file without the label column is no error: every column is then a
  /// feature (an unlabelled transfer pool).
  bool label_optional = false;
  /// Field separator.
  char delimiter = ',';
  /// At most this many data rows.
  std::int64_t max_rows = 10'000'000;
};

/// A parsed CSV file with a header row.
struct CsvTable {
  /// The feature columns' names, in file order (the label column removed).
  std::vector<std::string> feature_names;
  /// Data rows and feature columns.
  std::int64_t rows = 0, cols = 0;
  /// The features, row-major [rows, cols], every one finite.
  std::vector<float> features;
  /// Each row's label cell as written (empty when there is no label column).
  std::vector<std::string> labels;
};

/// Parses CSV text with a header (RFC 4180: quoted fields may hold the
/// separator, doubled quotes and line breaks; CRLF or LF). Every row must
/// have the header's number of fields; every feature cell must be a finite
/// number. Errors name `origin`, the line and the column.
CsvTable parse_csv(std::string_view text, const CsvOptions& options,
                   std::string_view origin);

/// A decoded image: 8-bit samples, height × width × channels, row-major.
struct Image {
  std::int64_t height = 0, width = 0, channels = 0;
  std::vector<std::uint8_t> pixels;
};

/// Decodes a PNG (libspng) or JPEG (libjpeg-turbo) image, chosen by its
/// signature, to 8 bits per sample with `channels` channels (1: grey, 3: RGB;
/// a colour image asked for as grey is converted, a grey one asked for as
/// RGB is replicated; alpha is dropped). At most `max_pixels` pixels.
Image decode_image(std::string_view bytes, std::int64_t channels,
                   std::string_view origin,
                   std::int64_t max_pixels = std::int64_t{1} << 26);

/// Which IDX file: images (magic 0x00000803: unsigned bytes, [N, rows,
/// cols]) or labels (0x00000801: unsigned bytes, [N]).
enum class IdxKind { kImages, kLabels };

/// A parsed IDX file.
struct IdxArray {
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> data;  ///< prod(shape) bytes.
};

/// Parses an IDX file (MNIST's format), gzip-compressed (its CRC checked) or
/// not: the magic of `kind`, dimensions of 1..10,000,000 items and 1..4,096
/// pixels a side, and a payload of exactly the declared size. Memory grows
/// with the bytes actually read, not with what the header claims.
IdxArray parse_idx(std::string_view bytes, IdxKind kind,
                   std::string_view origin);

/// Where examples come from (read by `read_examples`, data_files.hpp).
///
/// `path` is one of:
/// - a directory: images in one sub-folder per class name (torchvision's
///   ImageFolder), PNG or JPEG, every image of the task's shape;
/// - `.npz`: arrays `x` (inputs) and, when labelled, `y` (labels);
/// - `.npy`: inputs; labels from `labels`;
/// - `.csv`: a header, numeric feature columns and the label column
///   `label_column` (a label name or index); features only when
///   `label_column` is empty;
/// - `.pt`/`.pth`: a tensor saved by Python's `torch.save`; labels from
///   `labels`;
/// - anything else: an IDX file (gzip or not); labels from `labels`.
/// `labels` is an `.npy`, `.pt` or IDX file of integer labels, or a text
/// file (`.txt`) with one label name or index per line.
struct DataRef {
  std::filesystem::path path;
  std::filesystem::path labels;
  std::string label_column = "label";
};

}  // namespace chorus::fusion
