#include "chorus/coordinator/inflight.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/io_context.hpp>
#include <string>
#include <vector>

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"

namespace co = chorus::coordinator;

TEST_CASE(
    "inflight: takes what fits, makes the rest wait first come first served, "
    "and lets an oversized request go alone") {
  asio::io_context io;
  co::InflightBudget budget(100);
  std::vector<std::string> order;
  CHECK(budget.try_acquire(60));
  CHECK_FALSE(budget.try_acquire(50));  // 110 > 100
  auto waiter = [&](std::string name,
                    std::int64_t bytes) -> asio::awaitable<void> {
    co_await budget.acquire(bytes);
    order.push_back(name);
  };
  asio::co_spawn(io, waiter("a", 50), asio::detached);
  asio::co_spawn(io, waiter("b", 10), asio::detached);
  io.run_for(std::chrono::milliseconds(20));
  io.restart();
  // b would fit (70) but a was first: nobody jumps the line.
  CHECK(order.empty());
  CHECK_FALSE(budget.try_acquire(1));  // and no newcomer either
  budget.release(60);
  io.run_for(std::chrono::milliseconds(20));
  io.restart();
  CHECK(order == std::vector<std::string>{"a", "b"});
  CHECK(budget.in_flight() == 60);
  CHECK(budget.peak() == 60);
  // Larger than the whole budget: only once nothing else is in flight.
  asio::co_spawn(io, waiter("huge", 500), asio::detached);
  io.run_for(std::chrono::milliseconds(20));
  io.restart();
  CHECK(order.size() == 2);
  budget.release(50);
  budget.release(10);
  io.run_for(std::chrono::milliseconds(20));
  CHECK(order.back() == "huge");
  CHECK(budget.in_flight() == 500);
  CHECK_THROWS_AS(co::InflightBudget(0), chorus::Error);
}
