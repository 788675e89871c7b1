#include "chorus/protocol/task_codec.hpp"

#include "chorus/core/error.hpp"

namespace chorus::protocol {

void encode_task(const TaskSpec& task, v1::TaskSpec* out) {
  out->Clear();
  out->set_name(task.name);
  for (const auto& l : task.labels.names()) out->add_labels(l);
  for (auto d : task.input_shape) out->add_input_shape(d);
  out->set_input_dtype(task.dtype == InputDType::kUInt8 ? v1::DTYPE_UINT8
                                                        : v1::DTYPE_FLOAT32);
  switch (task.normalisation) {
    case Normalisation::kNone:
      out->set_normalisation(v1::NORMALISATION_NONE);
      break;
    case Normalisation::kPerChannel:
      out->set_normalisation(v1::NORMALISATION_PER_CHANNEL);
      break;
    case Normalisation::kPerFeature:
      out->set_normalisation(v1::NORMALISATION_PER_FEATURE);
      break;
  }
  for (auto m : task.mean) out->add_mean(m);
  for (auto s : task.std) out->add_std(s);
}

TaskSpec decode_task(const v1::TaskSpec& wire) {
  TaskSpec t;
  t.name = wire.name();
  t.labels = LabelSpace({wire.labels().begin(), wire.labels().end()});
  t.input_shape.assign(wire.input_shape().begin(), wire.input_shape().end());
  switch (wire.input_dtype()) {
    case v1::DTYPE_FLOAT32:
      t.dtype = InputDType::kFloat32;
      break;
    case v1::DTYPE_UINT8:
      t.dtype = InputDType::kUInt8;
      break;
    default:
      fail(
          Code::kInvalidArgument,
          "the task's input dtype must be DTYPE_FLOAT32 or DTYPE_UINT8, got {}",
          static_cast<int>(wire.input_dtype()));
  }
  switch (wire.normalisation()) {
    case v1::NORMALISATION_NONE:
      t.normalisation = Normalisation::kNone;
      break;
    case v1::NORMALISATION_PER_CHANNEL:
      t.normalisation = Normalisation::kPerChannel;
      break;
    case v1::NORMALISATION_PER_FEATURE:
      t.normalisation = Normalisation::kPerFeature;
      break;
    default:
      fail(Code::kInvalidArgument, "the task's normalisation {} is unknown",
           static_cast<int>(wire.normalisation()));
  }
  t.mean.assign(wire.mean().begin(), wire.mean().end());
  t.std.assign(wire.std().begin(), wire.std().end());
  t.validate();
  CHORUS_CHECK(
      !t.needs_statistics(),
      "the task '{}' asks for {} normalisation but carries no statistics",
      t.name, normalisation_name(t.normalisation));
  return t;
}

std::optional<TaskSpec> task_of(const v1::Welcome& welcome) {
  if (!welcome.has_task()) return std::nullopt;
  return decode_task(welcome.task());
}

std::optional<std::string> descriptor_mismatch(const TaskSpec& task,
                                               const v1::ExpertDescriptor& d,
                                               std::string_view who) {
  std::optional<InputDType> dtype;
  if (d.input_dtype() == v1::DTYPE_UINT8) dtype = InputDType::kUInt8;
  if (d.input_dtype() == v1::DTYPE_FLOAT32) dtype = InputDType::kFloat32;
  return task_mismatch(task, {d.input_shape().begin(), d.input_shape().end()},
                       dtype, {d.labels().begin(), d.labels().end()}, who);
}

}  // namespace chorus::protocol
