#pragma once

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>
#include <cstdint>
#include <deque>
#include <memory>

namespace chorus::coordinator {

/// A cap on the bytes of PredictRequests in flight across every node a
/// round asks at once (`coordinator.max_inflight_mb`), so the coordinator's
/// memory does not grow with the number of nodes: each node keeps at most
/// its window of requests in flight, and all of them together at most the
/// budget. Waiters are served first come, first served; a request larger
/// than the whole budget goes when nothing else is in flight. Used from one
/// strand (the round's); not thread-safe.
class InflightBudget {
 public:
  explicit InflightBudget(std::int64_t bytes);

  /// Waits until `bytes` fit, then takes them. For a node with nothing in
  /// flight (it holds none of the budget, so waiting cannot block it on
  /// itself).
  asio::awaitable<void> acquire(std::int64_t bytes);
  /// Takes `bytes` if they fit now and nobody is waiting. For a node with
  /// requests in flight: when this fails it consumes an answer (which
  /// releases) instead of waiting.
  bool try_acquire(std::int64_t bytes);
  /// Gives back what an answered request took, waking the first waiter.
  void release(std::int64_t bytes);

  std::int64_t capacity() const { return capacity_; }
  std::int64_t in_flight() const { return used_; }
  /// The most in flight at once so far.
  std::int64_t peak() const { return peak_; }

 private:
  bool fits(std::int64_t bytes) const;
  void take(std::int64_t bytes);

  std::int64_t capacity_;
  std::int64_t used_ = 0;
  std::int64_t peak_ = 0;
  std::deque<std::shared_ptr<asio::steady_timer>> waiters_;
};

}  // namespace chorus::coordinator
