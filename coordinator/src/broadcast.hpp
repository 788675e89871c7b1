#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "chorus/coordinator/registry.hpp"

namespace chorus::coordinator {

/// What a ModelPush carries besides the bytes.
struct PushedModel {
  int round = 0;
  std::string algorithm;
  std::string spec;
};

/// Sends `bytes` (a fused model file) to every connected node in ModelPush
/// chunks of `chunk` bytes, chunk by chunk to all nodes at once, each chunk
/// acknowledged before the next. Returns the nodes that took every chunk; a
/// node that fails one is logged and left out of the rest. A coroutine on
/// the registry's executor; `bytes` must outlive it.
asio::awaitable<std::vector<std::string>> push_model(
    NodeRegistry& registry, const std::string& bytes, PushedModel model,
    std::size_t chunk, std::chrono::milliseconds deadline);

}  // namespace chorus::coordinator
