#include "chorus/protocol/shutdown.hpp"

#include <spdlog/spdlog.h>

#include <asio/post.hpp>
#include <csignal>

#include "chorus/core/log.hpp"

namespace chorus::protocol {

ShutdownOnSignal::ShutdownOnSignal(asio::io_context& io,
                                   std::function<void(int)> graceful,
                                   std::function<void()> terminal,
                                   std::chrono::milliseconds grace)
    : signals_(io, SIGINT, SIGTERM),
      grace_timer_(io),
      graceful_(std::move(graceful)),
      terminal_(std::move(terminal)),
      grace_(grace) {
  wait();
}

void ShutdownOnSignal::wait() {
  signals_.async_wait([this](const std::error_code& ec, int signal) {
    if (ec) return;
    if (triggered_) {
      log::get("protocol")
          ->warn("event=signal signal={} action=terminate", signal);
      finish();
      return;
    }
    trigger(signal);
    wait();  // A second signal ends the grace period.
  });
}

void ShutdownOnSignal::trigger(int signal) {
  if (triggered_.exchange(true)) return;
  log::get("protocol")
      ->info("event=shutdown signal={} grace_ms={}", signal, grace_.count());
  if (graceful_) graceful_(signal);
  grace_timer_.expires_after(grace_);
  grace_timer_.async_wait([this](const std::error_code& ec) {
    if (!ec) finish();
  });
}

void ShutdownOnSignal::disarm() {
  asio::post(grace_timer_.get_executor(), [this] { stand_down(); });
}

void ShutdownOnSignal::end_by_signal() {
  std::signal(SIGINT, SIG_DFL);
  std::raise(SIGINT);
  std::abort();  // Not reached: SIGINT's default action ends the process.
}

IoThread::IoThread(asio::io_context& io)
    : io_(io), finished_(done_.get_future()), thread_([this] {
        io_.run();
        done_.set_value();
      }) {}

IoThread::~IoThread() { join_within(std::chrono::milliseconds(0)); }

bool IoThread::join_within(std::chrono::milliseconds grace) {
  if (!thread_.joinable()) return true;
  const bool ended = finished_.wait_for(grace) == std::future_status::ready;
  if (!ended) io_.stop();
  thread_.join();
  return ended;
}

bool ShutdownOnSignal::stand_down() {
  if (finished_) return false;
  finished_ = true;
  grace_timer_.cancel();
  std::error_code ignored;
  signals_.cancel(ignored);
  return true;
}

void ShutdownOnSignal::finish() {
  if (stand_down() && terminal_) terminal_();
}

}  // namespace chorus::protocol
