#include "chorus/protocol/shutdown.hpp"

#include <csignal>
#include <thread>

#include "support/doctest.hpp"

using namespace std::chrono_literals;

TEST_CASE(
    "shutdown: SIGTERM runs the graceful step, then the terminal one after the "
    "grace") {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::atomic<int> graceful_signal{-1};
  std::atomic<bool> terminal{false};
  auto start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration elapsed{};
  chorus::protocol::ShutdownOnSignal shutdown(
      io, [&](int s) { graceful_signal = s; },
      [&] {
        elapsed = std::chrono::steady_clock::now() - start;
        terminal = true;
        guard.reset();
        io.stop();
      },
      200ms);
  std::thread t([&] { io.run(); });
  std::raise(SIGTERM);
  t.join();
  CHECK(graceful_signal == SIGTERM);
  CHECK(terminal);
  CHECK(shutdown.triggered());
  CHECK(elapsed >= 200ms);
}

TEST_CASE("shutdown: a second signal ends the grace period at once") {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  int graceful_calls = 0;
  std::atomic<bool> terminal{false};
  auto start = std::chrono::steady_clock::now();
  chorus::protocol::ShutdownOnSignal shutdown(
      io, [&](int) { ++graceful_calls; },
      [&] {
        terminal = true;
        guard.reset();
        io.stop();
      },
      30s);
  std::thread t([&] { io.run(); });
  std::raise(SIGINT);
  std::this_thread::sleep_for(100ms);
  std::raise(SIGINT);
  t.join();
  CHECK(graceful_calls == 1);
  CHECK(terminal);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}

TEST_CASE(
    "shutdown: disarm lets the loop run out of work and IoThread joins it") {
  asio::io_context io;
  int graceful_calls = 0;
  chorus::protocol::ShutdownOnSignal shutdown(
      io, [&](int) { ++graceful_calls; }, [] {}, 30s);
  chorus::protocol::IoThread thread(io);
  shutdown.disarm();
  const auto start = std::chrono::steady_clock::now();
  // Nothing else is pending: the loop ends on its own, well before 5 s.
  CHECK(thread.join_within(5s));
  CHECK(std::chrono::steady_clock::now() - start < 2s);
  CHECK(graceful_calls == 0);
  CHECK(thread.join_within(0ms));  // Idempotent.
}

TEST_CASE("shutdown: IoThread stops a loop that still has work at the bound") {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);  // Work that never ends.
  chorus::protocol::IoThread thread(io);
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(thread.join_within(200ms));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed >= 200ms);
  CHECK(elapsed < 3s);
  CHECK(io.stopped());
}
