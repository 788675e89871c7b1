// Global models pushed by the coordinator: chunks reassembled and checked,
// then stored atomically in the state directory with a manifest.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/protocol/digest.hpp"
#include "service_impl.hpp"

namespace chorus::node {
namespace {

constexpr const char* kManifest = "global.json";

}  // namespace

protocol::Ack NodeService::receive_model_chunk(const protocol::ModelChunk& c) {
  std::lock_guard lock(impl_->mutex);
  auto& a = impl_->assembly;
  auto discard = [&](Code code, const std::string& why) {
    a.reset();
    impl_->log->warn("event=model_push_rejected round={} code={} reason=\"{}\"",
                     c.round, code_name(code), why);
    fail(code, "{}; the push is discarded and the previous model kept", why);
  };
  if (c.chunk_count == 0 || c.chunk_index >= c.chunk_count) {
    discard(Code::kInvalidArgument,
            fmt::format("chunk {} of {} is not a valid chunk", c.chunk_index,
                        c.chunk_count));
  }
  if (c.total_bytes > impl_->options.max_model_bytes) {
    discard(Code::kResourceExhausted,
            fmt::format("a model of {} bytes exceeds this node's limit of {}",
                        c.total_bytes, impl_->options.max_model_bytes));
  }
  if (c.round < impl_->coordinator_round) {
    discard(Code::kFailedPrecondition,
            fmt::format("a model of round {} is older than round {}, where "
                        "this coordinator is",
                        c.round, impl_->coordinator_round));
  }
  if (c.sha256.size() != 32) {
    discard(Code::kInvalidArgument,
            fmt::format("the digest has {} bytes, SHA-256 needs 32",
                        c.sha256.size()));
  }
  if (c.chunk_index == 0) {
    a = Assembly{.round = c.round,
                 .algorithm = c.algorithm,
                 .spec = c.spec,
                 .sha256 = c.sha256,
                 .count = c.chunk_count,
                 .total = c.total_bytes,
                 .next = 0,
                 .data = {}};
    a->data.reserve(c.total_bytes);
  } else if (!a || a->round != c.round || a->count != c.chunk_count ||
             a->total != c.total_bytes || a->sha256 != c.sha256 ||
             a->next != c.chunk_index) {
    discard(
        Code::kFailedPrecondition,
        fmt::format("chunk {} of round {} arrived out of order (expected {})",
                    c.chunk_index, c.round,
                    a ? fmt::format("chunk {} of round {}", a->next, a->round)
                      : std::string("chunk 0")));
  }
  if (a->data.size() + c.data.size() > a->total) {
    discard(Code::kDataLoss,
            fmt::format("the chunks exceed the announced {} bytes", a->total));
  }
  a->data += c.data;
  ++a->next;
  if (a->next < a->count) {
    return protocol::Ack{.message =
                             fmt::format("chunk {} of {} received",
                                         c.chunk_index + 1, c.chunk_count)};
  }
  if (a->data.size() != a->total) {
    discard(Code::kDataLoss,
            fmt::format("the model has {} bytes, {} were announced",
                        a->data.size(), a->total));
  }
  if (protocol::sha256(a->data) != a->sha256) {
    discard(Code::kDataLoss, "the model's SHA-256 digest does not match");
  }
  CHORUS_CHECK_CODE(!impl_->options.state_dir.empty(),
                    Code::kFailedPrecondition,
                    "this node has no state directory to store models in");
  auto stored = store_global_model(impl_->options.state_dir, a->round,
                                   a->algorithm, a->spec, a->data);
  impl_->log->info("event=model_stored round={} algorithm={} bytes={} file={}",
                   stored.round, stored.algorithm, a->total,
                   stored.file.string());
  impl_->stored = stored;
  impl_->coordinator_round = std::max(impl_->coordinator_round, stored.round);
  a.reset();
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
