#pragma once
// Fan-outs over node links: a node asked for its answers request by
// request, and the one way the blocking world waits for a coroutine.
#include <asio/co_spawn.hpp>
#include <asio/use_future.hpp>
#include <functional>
#include <optional>

#include "chorus/coordinator/remote_oracle.hpp"

namespace chorus::coordinator {

/// Receives one node's answers request by request, in order: the row of
/// the inputs they start at, and the answers (checked: one row per input,
/// one column per label, finite). An error it returns ends the query.
using AnswerSink = std::function<asio::awaitable<std::optional<Error>>(
    std::int64_t first_row, torch::Tensor answers)>;

/// How asking one node went.
struct Asked {
  fusion::QueryStats stats;    ///< What it answered.
  std::optional<Error> error;  ///< Why it stopped early, if it did.
};

/// Asks `node` for its answers to `inputs` (float32 as models see them),
/// as `options` say — at most min(batch, max_batch) inputs per request,
/// `window` requests in flight — handing each request's answers to `sink`.
/// Run it on one strand with the rest of its fan-out.
asio::awaitable<Asked> ask_node(RemoteExpert node, torch::Tensor inputs,
                                RemoteOracleOptions options, AnswerSink sink);

/// Runs `work` on `executor` and blocks the calling thread (never one of
/// the executor's) until it is done.
template <typename T>
T run_blocking(const asio::any_io_executor& executor, asio::awaitable<T> work) {
  return asio::co_spawn(executor, std::move(work), asio::use_future).get();
}

}  // namespace chorus::coordinator
