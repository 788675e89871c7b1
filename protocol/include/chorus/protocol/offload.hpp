#pragma once

#include <asio/experimental/as_tuple.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/thread_pool.hpp>
#include <asio/use_awaitable.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>

#include "chorus/core/error.hpp"

/// Blocking work (inference, fusion, file writes) run off the network
/// thread, awaited by the connection's coroutine.
namespace chorus::protocol {

/// What a request produced: a reply, or the error to answer with. Errors
/// travel as values between coroutines: g++ 12 has been seen corrupting the
/// heap when exceptions unwind through several awaitable frames.
template <typename T>
struct Outcome {
  T reply{};
  std::optional<Error> error;
};

/// Runs `work`, catching what it throws into the outcome.
template <typename F>
auto run_caught(F&& work) -> Outcome<std::invoke_result_t<F&>> {
  Outcome<std::invoke_result_t<F&>> out;
  try {
    out.reply = work();
  } catch (const Error& e) {
    out.error = e;
  } catch (const std::exception& e) {
    out.error = Error(Code::kInternal, e.what());
  }
  return out;
}

/// A piece of work for a pool and its outcome. The coroutine waits on
/// `done`, which the pool cancels when the work is over.
///
/// The work travels in a shared_ptr through plain asio::post handlers, never
/// as a lambda written in a statement with `co_await`: g++ 12 destroys such
/// a closure twice (tests/protocol/coroutine_rule_test.cpp).
template <typename T>
struct PoolCall {
  std::function<T()> work;
  Outcome<T> result;
  asio::steady_timer done;
  explicit PoolCall(const asio::any_io_executor& ex)
      : done(ex, asio::steady_timer::time_point::max()) {}
};

/// Starts `call` on `pool`; `co_await` the returned operation, then read
/// `call->result`. Not a coroutine.
template <typename T>
auto start_on_pool(asio::thread_pool& pool,
                   const std::shared_ptr<PoolCall<T>>& call) {
  asio::post(pool, [call] {
    call->result = run_caught(call->work);
    asio::post(call->done.get_executor(), [call] { call->done.cancel(); });
  });
  return call->done.async_wait(
      asio::experimental::as_tuple(asio::use_awaitable));
}

}  // namespace chorus::protocol
