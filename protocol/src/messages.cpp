#include "chorus/protocol/messages.hpp"

#include <algorithm>
#include <cctype>

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
