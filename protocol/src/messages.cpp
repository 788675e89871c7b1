#include "chorus/protocol/messages.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>

#include "chorus/core/error.hpp"

namespace chorus::protocol {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kInt64:
      return "int64";
    case DType::kUInt8:
      return "uint8";
    case DType::kUnspecified:
      break;
  }
  return "unspecified";
}

std::string wire_dtype_name(DType dtype) {
  std::string name = std::string("DTYPE_") + dtype_name(dtype);
  for (auto& c : name) c = static_cast<char>(std::toupper(c));
  return name;
}

std::int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kInt64:
      return 8;
    case DType::kUInt8:
      return 1;
    case DType::kUnspecified:
      break;
  }
  return 0;
}

std::int64_t checked_elements(const TensorBlob& blob,
                              const TensorLimits& limits) {
  const auto size = dtype_size(blob.dtype);
  CHORUS_CHECK(size > 0, "tensor has unknown dtype {}", dtype_name(blob.dtype));
  const auto& shape = blob.shape;
  CHORUS_CHECK(static_cast<std::int64_t>(shape.size()) <= limits.max_rank,
               "tensor of rank {} exceeds the maximum rank {}", shape.size(),
               limits.max_rank);
  std::int64_t elements = 1;
  for (auto d : shape) {
    CHORUS_CHECK(d >= 0, "tensor has a negative dimension {}", d);
    // Checked before multiplying, so the product cannot overflow.
    CHORUS_CHECK(d == 0 || elements <= limits.max_elements / d,
                 "tensor of shape [{}] exceeds the maximum of {} elements",
                 fmt::join(shape, ", "), limits.max_elements);
    elements *= d;
  }
  const auto expected = static_cast<std::uint64_t>(elements * size);
  CHORUS_CHECK(blob.data.size() == expected,
               "tensor of shape [{}] and dtype {} needs {} bytes, got {}",
               fmt::join(shape, ", "), dtype_name(blob.dtype), expected,
               blob.data.size());
  return elements;
}

bool Hello::can(std::string_view capability) const {
  return std::find(capabilities.begin(), capabilities.end(), capability) !=
         capabilities.end();
}

const char* kind_of(const NodeRequest& request) {
  struct Kind {
    const char* operator()(const PredictCall&) const { return "predict"; }
    const char* operator()(const ModelChunk&) const { return "model_push"; }
    const char* operator()(const AdaptCall&) const { return "adapt"; }
    const char* operator()(const WeightsCall&) const { return "weights"; }
  };
  return std::visit(Kind{}, request);
}

std::uint32_t round_of(const NodeRequest& request) {
  return std::visit([](const auto& r) { return r.round; }, request);
}

std::optional<std::string> descriptor_mismatch(const TaskSpec& task,
                                               const ExpertDescriptor& d,
                                               std::string_view who) {
  std::optional<InputDType> dtype;
  if (d.input_dtype == DType::kUInt8) dtype = InputDType::kUInt8;
  if (d.input_dtype == DType::kFloat32) dtype = InputDType::kFloat32;
  return task_mismatch(task, d.input_shape, dtype, d.labels, who);
}

}  // namespace chorus::protocol
