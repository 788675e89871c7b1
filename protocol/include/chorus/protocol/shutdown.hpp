#pragma once

#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <asio/steady_timer.hpp>
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <thread>

namespace chorus::protocol {

/// Structured shutdown on SIGINT and SIGTERM for the long-running commands:
/// the first signal runs `graceful` (stop accepting, send Goodbye, finish
/// what is in flight); `terminal` runs when the grace period ends or on a
/// second signal, whichever comes first.
class ShutdownOnSignal {
 public:
  ShutdownOnSignal(asio::io_context& io,
                   std::function<void(int signal)> graceful,
                   std::function<void()> terminal,
                   std::chrono::milliseconds grace = std::chrono::seconds(5));

  /// Whether a signal has arrived.
  bool triggered() const { return triggered_.load(); }
  /// Starts the grace period as if a signal had arrived (for tests and for
  /// shutting down after a fatal error).
  void trigger(int signal = 0);
  /// The graceful step has finished: stop listening for signals and cancel
  /// the grace period, so that the event loop can run out of work. Safe
  /// from any thread.
  void disarm();

  /// The forced end, for a `terminal` step: restores the default action of
  /// SIGINT and raises it, so the process ends as an uninterrupted Ctrl-C
  /// would (status 130 in a shell). Used when cancellation did not finish
  /// within the grace period or a second signal arrived.
  [[noreturn]] static void end_by_signal();

 private:
  void wait();
  // Stops listening for signals and cancels the grace period; false when
  // that was already done.
  bool stand_down();
  void finish();

  asio::signal_set signals_;
  asio::steady_timer grace_timer_;
  std::function<void(int)> graceful_;
  std::function<void()> terminal_;
  std::chrono::milliseconds grace_;
  std::atomic<bool> triggered_{false};
  bool finished_ = false;
};

/// Runs an io_context on a thread of its own until the loop runs out of
/// work — which it does once its server has stopped and its connections
/// have closed — and joins it within a bound, instead of stopping the loop
/// after a fixed sleep.
class IoThread {
 public:
  explicit IoThread(asio::io_context& io);
  /// `join_within(0)`: stops the loop at once if it is still running.
  ~IoThread();
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;

  /// Waits up to `grace` for the loop to end on its own, then stops it and
  /// joins the thread. True when it ended on its own. Idempotent.
  bool join_within(std::chrono::milliseconds grace);

 private:
  asio::io_context& io_;
  std::promise<void> done_;
  std::future<void> finished_;
  std::thread thread_;
};

}  // namespace chorus::protocol
