// Fuzz entry point of what a peer's requests reach once decoded, as far as
// the handlers go before torch: a stream of frames, each Envelope handled as
//  - the node's session handles a coordinator's request: decoded
//    (node_request_of), summarised for its audit record, a PredictCall's
//    rows charged to the budget ledger (refused once spent), and ModelPush
//    chunks reassembled across the stream (node/src/model_assembly.cpp:
//    order, sizes, digest, the size limit);
//  - the coordinator's registry admits a node's Hello: decoded, and its
//    expert descriptor checked against the federation's task
//    (descriptor_mismatch).
// Any bytes must be handled or refused with chorus::Error; a model comes out
// only whole and matching its digest; the ledger never spends past its
// budget. Built with libFuzzer by tests/fuzz/CMakeLists.txt (clang), and
// replayed over tests/fuzz/corpus/dispatch by ctest (g++). What follows in
// the handlers (inference, adaptation) is torch, which clang 14 does not
// build in C++20: the g++ suites cover it.
#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "chorus/core/error.hpp"
#include "chorus/core/task.hpp"
#include "chorus/node/budget.hpp"
#include "chorus/node/model_assembly.hpp"
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/digest.hpp"
#include "chorus/protocol/framing.hpp"

namespace pr = chorus::protocol;

namespace {

constexpr std::int64_t kTotalBudget = 5000;

struct Node {
  chorus::node::BudgetLedger ledger{chorus::node::BudgetPolicy{
      .max_batch = 1024, .total_budget = kTotalBudget, .round_budget = 2000}};
  chorus::node::ModelAssembly assembly{std::uint64_t{1} << 16};
  std::uint32_t round = 0;
};

template <class F>
void attempt(F&& f) {
  try {
    f();
  } catch (const chorus::Error&) {
    // Refused with a message: what bad input must get.
  }
}

void as_node(Node& node, const chorus::v1::Envelope& e) {
  attempt([&] {
    auto request = pr::node_request_of(chorus::v1::Envelope(e));
    (void)pr::kind_of(request);
    const auto round = pr::round_of(request);
    if (auto* p = std::get_if<pr::PredictCall>(&request)) {
      if (round > node.round) {
        node.round = round;
        node.ledger.start_round();
      }
      const std::int64_t rows = p->inputs.shape.empty() ? 0 : p->inputs.rows();
      if (rows > 0 && rows <= node.ledger.policy().max_batch) {
        node.ledger.charge(rows);
      }
      if (node.ledger.spent() > kTotalBudget) std::abort();
    } else if (auto* chunk = std::get_if<pr::ModelChunk>(&request)) {
      auto model = node.assembly.add(*chunk, node.round);
      if (model) {
        if (pr::sha256(model->data) != chunk->sha256 ||
            model->data.size() != chunk->total_bytes)
          std::abort();
        node.round = std::max(node.round, model->round);
      }
    }
  });
}

void as_coordinator(const chorus::v1::Envelope& e) {
  if (!e.has_hello()) return;
  static const chorus::TaskSpec task = chorus::fashion_mnist_task();
  attempt([&] {
    auto hello = pr::decode_hello(e.hello());
    (void)pr::descriptor_mismatch(task, hello.expert, "node 'fuzz'");
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data,
                                      std::size_t size) {
  // Protobuf's own complaints (invalid UTF-8 in a string field) are not
  // findings, and writing them would slow the fuzzer down.
  static const bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  std::span<const std::uint8_t> rest(data, size);
  constexpr std::uint32_t kMaxFrame = 1 << 16;
  Node node;
  while (rest.size() >= pr::kFrameHeaderSize) {
    std::uint32_t body = 0;
    try {
      body = pr::decode_frame_header(rest.first<pr::kFrameHeaderSize>(),
                                     kMaxFrame);
    } catch (const chorus::Error&) {
      return 0;  // The connection is cut.
    }
    rest = rest.subspan(pr::kFrameHeaderSize);
    if (rest.size() < body) return 0;
    chorus::v1::Envelope e;
    if (e.ParseFromArray(rest.data(), static_cast<int>(body))) {
      as_node(node, e);
      as_coordinator(e);
    }
    rest = rest.subspan(body);
  }
  return 0;
}
