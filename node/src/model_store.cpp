// Global models pushed by the coordinator: chunks reassembled and checked,
// then stored atomically in the state directory with a manifest.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/protocol/digest.hpp"
#include "service_impl.hpp"

namespace chorus::node {
namespace {

constexpr const char* kManifest = "global.json";

}  // namespace

protocol::Ack NodeService::receive_model_chunk(const protocol::ModelChunk& c) {
  std::lock_guard lock(impl_->mutex);
  std::optional<AssembledModel> model;
  try {
    model = impl_->assembly.add(c, impl_->coordinator_round);
  } catch (const Error& e) {
    metrics::count("chorus_node_model_pushes_total",
                   "Models pushed by the coordinator, by outcome",
                   {{"outcome", "refused"}});
    impl_->log->warn("event=model_push_rejected round={} code={} reason=\"{}\"",
                     c.round, code_name(e.code()), e.what());
    throw;
  }
  if (!model) {
    return protocol::Ack{.message =
                             fmt::format("chunk {} of {} received",
                                         c.chunk_index + 1, c.chunk_count)};
  }
  CHORUS_CHECK_CODE(!impl_->options.state_dir.empty(),
                    Code::kFailedPrecondition,
                    "this node has no state directory to store models in");
  auto stored = store_global_model(impl_->options.state_dir, model->round,
                                   model->algorithm, model->spec, model->data);
  impl_->log->info("event=model_stored round={} algorithm={} bytes={} file={}",
                   stored.round, stored.algorithm, model->data.size(),
                   stored.file.string());
  impl_->stored = stored;
  metrics::count("chorus_node_model_pushes_total",
                 "Models pushed by the coordinator, by outcome",
                 {{"outcome", "stored"}});
  metrics::set("chorus_node_model_round",
               "The round of the global model this node stores", {},
               stored.round);
  impl_->coordinator_round = std::max(impl_->coordinator_round, stored.round);
  return protocol::Ack{
      .message = fmt::format("model of round {} stored", stored.round)};
}

StoredModel store_global_model(const std::filesystem::path& state_dir,
                               std::uint32_t round,
                               const std::string& algorithm,
                               const std::string& spec,
                               const std::string& bytes) {
  StoredModel stored{
      .round = round,
      .algorithm = algorithm,
      .spec = spec,
      .sha256_hex = protocol::to_hex(protocol::sha256(bytes)),
      .file = state_dir / fmt::format("global-round-{}.pt", round)};
  write_file_atomic(stored.file, bytes);
  nlohmann::json manifest{
      {"round", stored.round}, {"algorithm", stored.algorithm},
      {"spec", stored.spec},   {"sha256", stored.sha256_hex},
      {"bytes", bytes.size()}, {"file", stored.file.filename().string()}};
  write_file_atomic(state_dir / kManifest, manifest.dump(2) + "\n");
  return stored;
}

std::optional<StoredModel> read_stored_model(
    const std::filesystem::path& state_dir) {
  const auto path = state_dir / kManifest;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  try {
    auto j = nlohmann::json::parse(read_file(path));
    return StoredModel{.round = j.at("round").get<std::uint32_t>(),
                       .algorithm = j.at("algorithm").get<std::string>(),
                       .spec = j.at("spec").get<std::string>(),
                       .sha256_hex = j.at("sha256").get<std::string>(),
                       .file = state_dir / j.at("file").get<std::string>()};
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(Code::kDataLoss, "corrupt model manifest '{}': {}", path.string(),
         e.what());
  }
}

}  // namespace chorus::node
