#include "chorus/fusion/fused_model.hpp"

#include <fmt/ostream.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/archive.hpp"

namespace chorus::fusion {
namespace {

constexpr const char* kFusedModelFormat = "chorus.fused_model.v1";

std::vector<std::pair<std::string, torch::Tensor>> named_state(
    ClassifierImpl& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model.named_parameters()) {
    out.emplace_back("param." + item.key(), item.value());
  }
  for (const auto& item : model.named_buffers()) {
    out.emplace_back("buffer." + item.key(), item.value());
  }
  return out;
}

torch::serialize::OutputArchive state_archive(ClassifierImpl& model) {
  torch::serialize::OutputArchive tensors;
  for (const auto& [name, tensor] : named_state(model)) {
    tensors.write(name, tensor.detach(), /*is_buffer=*/true);
  }
  return tensors;
}

// Fills `model`'s parameters and buffers from `tensors`, checking each
// shape against the spec's.
void read_state(torch::serialize::InputArchive& tensors, ClassifierImpl& model,
                const std::filesystem::path& path) {
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : named_state(model)) {
    torch::Tensor stored;
    tensors.read(name, stored, /*is_buffer=*/true);
    CHORUS_CHECK_CODE(stored.sizes() == tensor.sizes(), Code::kDataLoss,
                      "'{}': tensor {} has shape {}, the spec needs {}",
                      path.string(), name, fmt::streamed(stored.sizes()),
                      fmt::streamed(tensor.sizes()));
    tensor.copy_(stored);
  }
}

}  // namespace

void save_fused_model(const FusedModel& fused,
                      const std::filesystem::path& path) {
  CHORUS_CHECK(fused.model != nullptr, "fused model has no weights");
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFusedModelFormat)));
  archive.write("algorithm", c10::IValue(fused.algorithm));
  archive.write("spec", c10::IValue(fused.spec.to_string()));
  torch::serialize::OutputArchive attributes;
  for (const auto& [key, value] : fused.attributes) {
    attributes.write(key, c10::IValue(value));
  }
  archive.write("attributes", attributes);
  auto tensors = state_archive(*fused.model);
  archive.write("tensors", tensors);
  if (!fused.members.empty()) {
    torch::serialize::OutputArchive members;
    members.write("count",
                  c10::IValue(static_cast<std::int64_t>(fused.members.size())));
    for (std::size_t i = 0; i < fused.members.size(); ++i) {
      CHORUS_CHECK(fused.members[i] != nullptr, "member {} has no weights", i);
      auto member = state_archive(*fused.members[i]);
      members.write(std::to_string(i), member);
    }
    archive.write("members", members);
  }
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomic(path, std::move(bytes).str());
}

FusedModel load_fused_model(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    fail(Code::kNotFound, "fused model '{}' does not exist", path.string());
  }
  FusedModel fused;
  try {
    // The zip's checksums first: libtorch would read altered bytes.
    std::istringstream in(read_verified_archive(path));
    torch::serialize::InputArchive archive;
    archive.load_from(in);
    c10::IValue value;
    archive.read("format", value);
    CHORUS_CHECK_CODE(
        value.isString() && value.toStringRef() == kFusedModelFormat,
        Code::kDataLoss, "'{}' is not a chorus fused model", path.string());
    archive.read("algorithm", value);
    fused.algorithm = value.toStringRef();
    archive.read("spec", value);
    fused.spec = ModelSpec::parse(value.toStringRef());
    torch::serialize::InputArchive attributes;
    archive.read("attributes", attributes);
    for (const auto& key : attributes.keys()) {
      attributes.read(key, value);
      fused.attributes[key] = value.toStringRef();
    }
    fused.model = make_classifier(fused.spec);
    torch::serialize::InputArchive tensors;
    archive.read("tensors", tensors);
    read_state(tensors, *fused.model, path);
    if (torch::serialize::InputArchive members;
        archive.try_read("members", members)) {
      c10::IValue stored_count;
      members.read("count", stored_count);
      CHORUS_CHECK_CODE(stored_count.isInt() && stored_count.toInt() >= 0 &&
                            stored_count.toInt() <= 100000,
                        Code::kDataLoss, "'{}': unreadable member count",
                        path.string());
      const auto count = stored_count.toInt();
      for (std::int64_t i = 0; i < count; ++i) {
        torch::serialize::InputArchive member;
        CHORUS_CHECK_CODE(members.try_read(std::to_string(i), member),
                          Code::kDataLoss, "'{}': member {} of {} is missing",
                          path.string(), i, count);
        fused.members.push_back(make_classifier(fused.spec));
        read_state(member, *fused.members.back(), path);
        fused.members.back()->eval();
      }
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(Code::kDataLoss, "cannot read fused model '{}': {}", path.string(),
         e.what());
  }
  fused.model->eval();
  return fused;
}

TaskOutputs task_outputs(const FusedModel& fused) {
  TaskOutputs out;
  auto classes = fused.attributes.find("outputs");
  auto names = fused.attributes.find("classes");
  if (classes == fused.attributes.end() || names == fused.attributes.end())
    return out;
  try {
    out.classes =
        nlohmann::json::parse(classes->second).get<std::vector<std::int64_t>>();
    out.names =
        nlohmann::json::parse(names->second).get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    fail(Code::kDataLoss, "a {} model's task attributes are unreadable: {}",
         fused.algorithm, e.what());
  }
  CHORUS_CHECK_CODE(
      static_cast<std::int64_t>(out.classes.size()) == fused.spec.num_classes &&
          out.names.size() == out.classes.size(),
      Code::kDataLoss,
      "a {} model with {} outputs names a task of {} classes ({} names)",
      fused.algorithm, fused.spec.num_classes, out.classes.size(),
      out.names.size());
  return out;
}

void check_predicts_alone(const FusedModel& fused,
                          const std::filesystem::path& file) {
  CHORUS_CHECK_CODE(
      !needs_experts_at_prediction(fused.algorithm), Code::kFailedPrecondition,
      "'{}' is a {} fuser: it combines the experts' answers and needs them at "
      "prediction time; ask the coordinator that runs it (chorus predict "
      "--coordinator HOST:PORT), or distil it first (algorithm foe-distill)",
      file.string(), fused.algorithm);
  CHORUS_CHECK_CODE(
      fused.algorithm != "dro", Code::kFailedPrecondition,
      "'{}' is a dro initialisation: it predicts once adapted to a task. "
      "`chorus node adapt` adapts it with a node's private shots and writes "
      "the adapted model (adapted.pt in the node's state directory), which "
      "this command takes",
      file.string());
}

bool needs_experts_at_prediction(const std::string& algorithm) {
  return algorithm == "foe" || algorithm == "foe-select" ||
         algorithm == "frugal";
}

}  // namespace chorus::fusion
