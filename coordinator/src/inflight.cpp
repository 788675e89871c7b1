#include "chorus/coordinator/inflight.hpp"

#include <algorithm>
#include <asio/redirect_error.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "chorus/core/error.hpp"

namespace chorus::coordinator {

InflightBudget::InflightBudget(std::int64_t bytes) : capacity_(bytes) {
  CHORUS_CHECK(bytes > 0, "the in-flight budget must be positive, got {}",
               bytes);
}

bool InflightBudget::fits(std::int64_t bytes) const {
  return used_ == 0 || used_ + bytes <= capacity_;
}

void InflightBudget::take(std::int64_t bytes) {
  used_ += bytes;
  peak_ = std::max(peak_, used_);
}

bool InflightBudget::try_acquire(std::int64_t bytes) {
  if (!waiters_.empty() || !fits(bytes)) return false;
  take(bytes);
  return true;
}

asio::awaitable<void> InflightBudget::acquire(std::int64_t bytes) {
  if (try_acquire(bytes)) co_return;
  auto timer = std::make_shared<asio::steady_timer>(
      co_await asio::this_coro::executor,
      asio::steady_timer::time_point::max());
  waiters_.push_back(timer);
  while (waiters_.front() != timer || !fits(bytes)) {
    asio::error_code ec;  // operation_aborted: woken by release
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    timer->expires_at(asio::steady_timer::time_point::max());
  }
  waiters_.pop_front();
  take(bytes);
  // The next in line may fit too.
  if (!waiters_.empty()) waiters_.front()->cancel();
}

void InflightBudget::release(std::int64_t bytes) {
  used_ = std::max<std::int64_t>(0, used_ - bytes);
  if (!waiters_.empty()) waiters_.front()->cancel();
}

}  // namespace chorus::coordinator
