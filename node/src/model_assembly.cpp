#include "chorus/node/model_assembly.hpp"

#include <fmt/format.h>

#include "chorus/core/error.hpp"
#include "chorus/protocol/digest.hpp"

namespace chorus::node {

std::optional<AssembledModel> ModelAssembly::add(const protocol::ModelChunk& c,
                                                 std::uint32_t oldest_round) {
  auto& a = partial_;
  auto discard = [&](Code code, const std::string& why) {
    a.reset();
    fail(code, "{}; the push is discarded and the previous model kept", why);
  };
  if (c.chunk_count == 0 || c.chunk_index >= c.chunk_count) {
    discard(Code::kInvalidArgument,
            fmt::format("chunk {} of {} is not a valid chunk", c.chunk_index,
                        c.chunk_count));
  }
  if (c.total_bytes > max_bytes_) {
    discard(Code::kResourceExhausted,
            fmt::format("a model of {} bytes exceeds this node's limit of {}",
                        c.total_bytes, max_bytes_));
  }
  if (c.round < oldest_round) {
    discard(Code::kFailedPrecondition,
            fmt::format("a model of round {} is older than round {}, where "
                        "this coordinator is",
                        c.round, oldest_round));
  }
  if (c.sha256.size() != 32) {
    discard(Code::kInvalidArgument,
            fmt::format("the digest has {} bytes, SHA-256 needs 32",
                        c.sha256.size()));
  }
  if (c.chunk_index == 0) {
    a = Partial{.model = {.round = c.round,
                          .algorithm = c.algorithm,
                          .spec = c.spec,
                          .data = {}},
                .sha256 = c.sha256,
                .count = c.chunk_count,
                .total = c.total_bytes,
                .next = 0};
  } else if (!a || a->model.round != c.round || a->count != c.chunk_count ||
             a->total != c.total_bytes || a->sha256 != c.sha256 ||
             a->next != c.chunk_index) {
    discard(Code::kFailedPrecondition,
            fmt::format(
                "chunk {} of round {} arrived out of order (expected {})",
                c.chunk_index, c.round,
                a ? fmt::format("chunk {} of round {}", a->next, a->model.round)
                  : std::string("chunk 0")));
  }
  auto& data = a->model.data;
  if (data.size() + c.data.size() > a->total) {
    discard(Code::kDataLoss,
            fmt::format("the chunks exceed the announced {} bytes", a->total));
  }
  data += c.data;
  ++a->next;
  if (a->next < a->count) return std::nullopt;
  if (data.size() != a->total) {
    discard(Code::kDataLoss,
            fmt::format("the model has {} bytes, {} were announced",
                        data.size(), a->total));
  }
  if (protocol::sha256(data) != a->sha256) {
    discard(Code::kDataLoss, "the model's SHA-256 digest does not match");
  }
  AssembledModel done = std::move(a->model);
  a.reset();
  return done;
}

}  // namespace chorus::node
