#pragma once
// A ModelPush reassembled from its chunks. No torch and no files here, so
// the node's handling of a coordinator's pushes is fuzzed alone
// (tests/fuzz/dispatch_fuzz.cpp); NodeService stores what it returns.

#include <cstdint>
#include <optional>
#include <string>

#include "chorus/protocol/messages.hpp"

namespace chorus::node {

/// A whole pushed model, its digest checked.
struct AssembledModel {
  std::uint32_t round = 0;
  std::string algorithm, spec;
  std::string data;
};

class ModelAssembly {
 public:
  /// Models over `max_bytes` are refused.
  explicit ModelAssembly(std::uint64_t max_bytes) : max_bytes_(max_bytes) {}

  /// Adds one chunk. Returns the model after its last chunk, nullopt before.
  /// Throws `chorus::Error` and discards the partial model: INVALID_ARGUMENT
  /// for a chunk index outside its count or a digest that is not 32 bytes;
  /// RESOURCE_EXHAUSTED for a model over the limit; FAILED_PRECONDITION for
  /// a round older than `oldest_round` or a chunk out of order (another
  /// round, count, size or digest than chunk 0 announced); DATA_LOSS when
  /// the bytes exceed or fall short of the announced size or do not match
  /// the digest. Memory grows with the bytes received, not with the size a
  /// chunk announces.
  std::optional<AssembledModel> add(const protocol::ModelChunk& chunk,
                                    std::uint32_t oldest_round);

  /// Whether a model is partly received.
  bool in_progress() const { return partial_.has_value(); }

 private:
  struct Partial {
    AssembledModel model;
    std::string sha256;
    std::uint32_t count = 0;
    std::uint64_t total = 0;
    std::uint32_t next = 0;
  };
  std::uint64_t max_bytes_;
  std::optional<Partial> partial_;
};

}  // namespace chorus::node
