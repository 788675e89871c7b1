// Fuzz entry point of what a peer's bytes reach first: framing
// (protocol/src/framing.cpp), Envelope decoding (protobuf), the codec that
// turns each body into Chorus's values (protocol/src/codec.cpp) and the
// tensor checks made before anything is allocated (`checked_elements`,
// messages.cpp). Input: a stream of frames, as a connection delivers them.
// Any bytes must be decoded or refused with chorus::Error; never crash, hang
// or allocate what a header merely announces. Built with libFuzzer by
// tests/fuzz/CMakeLists.txt (clang; torch's headers do not build under
// clang 14 in C++20, so the libFuzzer build stops at the checks), and
// replayed over tests/fuzz/corpus/envelope by ctest (g++), where every
// accepted tensor also becomes a torch tensor through the distribution
// check (CHORUS_FUZZ_TORCH).
#ifdef CHORUS_FUZZ_TORCH
#include <ATen/ATen.h>

#include "chorus/protocol/tensor_codec.hpp"
#endif

#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "chorus/core/error.hpp"
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/framing.hpp"

namespace pr = chorus::protocol;

namespace {

// A tensor as the receiving side would make it: bounded, then checked.
void tensor(const pr::TensorBlob& blob) {
  pr::TensorLimits limits;
  limits.max_elements = 1 << 20;
  const auto elements = pr::checked_elements(blob, limits);
  if (elements < 0 || elements > limits.max_elements) std::abort();
  if (static_cast<std::int64_t>(blob.data.size()) !=
      elements * pr::dtype_size(blob.dtype))
    std::abort();
#ifdef CHORUS_FUZZ_TORCH
  auto t = pr::to_tensor(blob, limits);
  if (t.numel() != elements) std::abort();
  if (t.is_floating_point() && t.dim() == 2) {
    (void)pr::has_non_finite(t);
    (void)pr::distribution_problem(t.to(at::kFloat));
  }
#endif
}

// Every decoder that could meet this envelope, as node, coordinator and
// operator do.
void decode(const chorus::v1::Envelope& e) {
  auto attempt = [](auto&& f) {
    try {
      f();
    } catch (const chorus::Error&) {
      // Refused with a message: what bad input must get.
    }
  };
  attempt([&] {
    auto r = pr::node_request_of(chorus::v1::Envelope(e));
    (void)pr::kind_of(r);
    (void)pr::round_of(r);
    if (auto* p = std::get_if<pr::PredictCall>(&r)) tensor(p->inputs);
  });
  attempt([&] { tensor(pr::predict_call_of(chorus::v1::Envelope(e)).inputs); });
  attempt([&] {
    tensor(pr::predict_answer_of(chorus::v1::Envelope(e), "fuzz").outputs);
  });
  attempt([&] {
    auto a = pr::adapt_answer_of(chorus::v1::Envelope(e), "fuzz");
    tensor(a.embedding_mean);
    tensor(a.embedding_logvar);
  });
  attempt([&] {
    tensor(pr::weights_answer_of(chorus::v1::Envelope(e), "fuzz").parameters);
  });
  attempt([&] { (void)pr::ack_of(e, "fuzz"); });
  if (e.has_hello()) attempt([&] { (void)pr::decode_hello(e.hello()); });
  if (e.has_welcome()) attempt([&] { (void)pr::decode_welcome(e.welcome()); });
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
  // Small frames, so that a fuzzer explores bodies rather than sizes.
  constexpr std::uint32_t kMaxFrame = 1 << 16;
  while (rest.size() >= pr::kFrameHeaderSize) {
    std::uint32_t body = 0;
    try {
      body = pr::decode_frame_header(rest.first<pr::kFrameHeaderSize>(),
                                     kMaxFrame);
    } catch (const chorus::Error&) {
      return 0;  // The connection is cut.
    }
    if (body == 0 || body > kMaxFrame) std::abort();
    rest = rest.subspan(pr::kFrameHeaderSize);
    if (rest.size() < body) return 0;  // Truncated: waits for more.
    chorus::v1::Envelope e;
    if (e.ParseFromArray(rest.data(), static_cast<int>(body))) decode(e);
    rest = rest.subspan(body);
  }
  return 0;
}
