#pragma once

#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <exception>
#include <memory>
#include <optional>
#include <vector>

/// Concurrency between coroutines without threads: start several pieces of
/// work on one executor and await each result. The coordinator's fan-outs
/// (queries, pushes, adaptations) are built from it.
namespace chorus::protocol {

/// A result that one coroutine produces and others await. All of its use
/// must be on one strand (or a single-threaded io_context).
template <typename T>
class Eventual {
 public:
  explicit Eventual(const asio::any_io_executor& ex)
      : ready_(ex, asio::steady_timer::time_point::max()) {}

  /// Stores the result and wakes the waiter.
  void set(T value) {
    value_ = std::move(value);
    // An expiry in the past wakes a pending wait and makes later waits
    // complete at once.
    ready_.expires_at(asio::steady_timer::time_point::min());
  }
  bool ready() const { return value_.has_value(); }
  /// Returns once the result is there (at once when it already is).
  asio::awaitable<void> wait() {
    while (!value_) {
      co_await ready_.async_wait(
          asio::experimental::as_tuple(asio::use_awaitable));
    }
  }
  /// The result; only after `wait`.
  T& get() { return *value_; }

 private:
  std::optional<T> value_;
  asio::steady_timer ready_;
};

/// Starts `work` on `ex` (a strand) and returns where its result will be.
/// `work` reports errors in its result; an exception escaping it is a bug,
/// logged, and leaves a default-constructed result.
template <typename T>
std::shared_ptr<Eventual<T>> start(const asio::any_io_executor& ex,
                                   asio::awaitable<T> work) {
  auto result = std::make_shared<Eventual<T>>(ex);
  asio::co_spawn(
      ex, std::move(work), [result](std::exception_ptr thrown, T value) {
        if (thrown) {
          try {
            std::rethrow_exception(thrown);
          } catch (const std::exception& e) {
            spdlog::error("event=coroutine_escaped error=\"{}\"", e.what());
          }
        }
        result->set(std::move(value));
      });
  return result;
}

/// Runs every one of `works` concurrently on the calling coroutine's
/// executor and returns their results, in order, once all are done.
template <typename T>
asio::awaitable<std::vector<T>> all_of(std::vector<asio::awaitable<T>> works) {
  const auto ex = co_await asio::this_coro::executor;
  std::vector<std::shared_ptr<Eventual<T>>> running;
  for (auto& work : works) running.push_back(start(ex, std::move(work)));
  std::vector<T> out;
  for (auto& r : running) {
    co_await r->wait();
    out.push_back(std::move(r->get()));
  }
  co_return out;
}

}  // namespace chorus::protocol
