// A connection over a TLS stream (or plain TCP, for benchmarks): one strand,
// reader and writer coroutines, a bounded send queue, requests with
// deadlines, heartbeats and an idle timeout, Goodbye.
#include <spdlog/spdlog.h>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/post.hpp>
#include <asio/use_future.hpp>

#include "chorus/core/log.hpp"
#include "chorus/protocol/channel.hpp"
#include "envelope_io.hpp"

namespace chorus::protocol {

using namespace envelope_io;
using namespace asio::experimental::awaitable_operators;

v1::Envelope make_status(Code code, const std::string& message,
                         std::uint64_t request_id) {
  v1::Envelope e;
  e.set_request_id(request_id);
  e.mutable_status()->set_code(static_cast<v1::Code>(code));
  // Whatever a handler threw, no stack trace (paths, addresses) leaves.
  e.mutable_status()->set_message(without_backtrace(message));
  return e;
}

namespace {

// What identifies a request without its payload: its id, kind, round and
// the shape of its inputs (for audits of replies that were not delivered).
v1::Envelope request_stub(const v1::Envelope& request) {
  v1::Envelope stub;
  stub.set_request_id(request.request_id());
  if (request.has_predict_request()) {
    auto* p = stub.mutable_predict_request();
    p->set_round(request.predict_request().round());
    *p->mutable_inputs()->mutable_shape() =
        request.predict_request().inputs().shape();
  } else if (request.has_model_push()) {
    stub.mutable_model_push()->set_round(request.model_push().round());
  } else if (request.has_adapt_request()) {
    stub.mutable_adapt_request()->set_round(request.adapt_request().round());
  } else if (request.has_weights_request()) {
    stub.mutable_weights_request()->set_round(
        request.weights_request().round());
  }
  return stub;
}

}  // namespace

template <typename S>
BasicConnection<S>::BasicConnection(Stream stream, ChannelOptions options,
                                    std::string peer_identity,
                                    std::string log_name)
    : stream_(std::move(stream)),
      strand_(asio::make_strand(stream_.get_executor())),
      options_(options),
      peer_identity_(std::move(peer_identity)),
      log_(log::get(log_name)),
      write_signal_(strand_, Clock::time_point::max()),
      close_deadline_(strand_),
      heartbeat_tick_(strand_) {}

template <typename S>
BasicConnection<S>::~BasicConnection() = default;

template <typename S>
void BasicConnection<S>::start(RequestHandler on_request,
                               CloseHandler on_close) {
  on_request_ = std::move(on_request);
  on_close_ = std::move(on_close);
  open_ = true;
  last_sent_ = last_received_ = Clock::now();
  last_heard_ns_ = last_received_.time_since_epoch().count();
  auto self = this->shared_from_this();
  auto report = [self](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      self->log_->error("peer={} event=coroutine_failed error={}",
                        self->peer_identity_, ex.what());
      asio::post(self->strand_, [self] { self->shutdown("internal error"); });
    }
  };
  asio::co_spawn(strand_, reader(), report);
  asio::co_spawn(strand_, writer(), report);
  asio::co_spawn(strand_, heartbeat(), report);
}

template <typename S>
awaitable<void> BasicConnection<S>::reader() {
  auto self = this->shared_from_this();
  while (!closing_) {
    std::optional<v1::Envelope> envelope;
    try {
      envelope = co_await read_envelope(stream_, options_.max_frame_size);
    } catch (const Error& e) {
      if (closing_) break;
      log_->warn("peer={} event=bad_frame code={} error=\"{}\"", peer_identity_,
                 code_name(e.code()), e.what());
      if (e.code() != Code::kUnavailable && e.code() != Code::kDataLoss) {
        enqueue(make_status(e.code(), e.what()));
      }
      shutdown(e.what());
      break;
    }
    if (!envelope) {
      shutdown("the peer closed the connection");
      break;
    }
    last_received_ = Clock::now();
    last_heard_ns_ = last_received_.time_since_epoch().count();
    if (options_.on_receive) options_.on_receive(*envelope);
    const auto id = envelope->request_id();
    switch (envelope->body_case()) {
      case v1::Envelope::kHeartbeat:
        break;
      case v1::Envelope::kGoodbye:
        shutdown(fmt::format("the peer said goodbye: {}",
                             envelope->goodbye().reason()));
        break;
      case v1::Envelope::kPredictRequest:
      case v1::Envelope::kModelPush:
      case v1::Envelope::kAdaptRequest:
      case v1::Envelope::kWeightsRequest:
      case v1::Envelope::kStatusRequest:
        if (id == 0) {
          const std::string why = "a request needs a non-zero request_id";
          if (options_.on_refused)
            options_.on_refused(peer_identity_, *envelope,
                                Code::kInvalidArgument, why);
          enqueue(make_status(Code::kInvalidArgument, why));
        } else {
          asio::co_spawn(strand_, serve(std::move(*envelope)), asio::detached);
        }
        break;
      case v1::Envelope::kStatus:
      case v1::Envelope::kPredictResponse:
      case v1::Envelope::kAdaptResponse:
      case v1::Envelope::kWeightsResponse:
      case v1::Envelope::kStatusResponse: {
        auto it = pending_.find(id);
        if (it != pending_.end()) {
          *it->second.reply = std::move(*envelope);
          it->second.timer->cancel();
          pending_.erase(it);
        } else if (envelope->has_status() && id == 0) {
          log_->warn("peer={} event=peer_status code={} message=\"{}\"",
                     peer_identity_,
                     code_name(static_cast<Code>(envelope->status().code())),
                     envelope->status().message());
        } else {
          log_->debug("peer={} event=late_reply request_id={}", peer_identity_,
                      id);
        }
        break;
      }
      case v1::Envelope::kHello:
      case v1::Envelope::kWelcome: {
        const std::string why =
            "Hello and Welcome are only valid at the start of a connection";
        if (options_.on_refused)
          options_.on_refused(peer_identity_, *envelope,
                              Code::kFailedPrecondition, why);
        enqueue(make_status(Code::kFailedPrecondition, why, id));
        break;
      }
      default: {
        // A body of a later protocol minor (unknown to this build), or none.
        const std::string why = fmt::format(
            "an envelope without a body this peer knows (it speaks protocol "
            "{}.{})",
            kProtocolMajor, kProtocolMinor);
        if (options_.on_refused)
          options_.on_refused(peer_identity_, *envelope, Code::kUnimplemented,
                              why);
        enqueue(make_status(Code::kUnimplemented, why, id));
        break;
      }
    }
  }
}

template <typename S>
awaitable<void> BasicConnection<S>::serve(v1::Envelope request) {
  auto self = this->shared_from_this();
  const auto request_id = request.request_id();
  const auto stub =
      options_.on_undelivered ? request_stub(request) : v1::Envelope{};
  v1::Envelope reply;
  // The peer waits in silence while its request is served: that is not
  // idleness.
  ++serving_;
  try {
    reply = co_await on_request_(std::move(request));
  } catch (const Error& e) {
    reply = make_status(e.code(), e.what());
  } catch (const std::exception& e) {
    log_->error("peer={} request_id={} event=handler_failed error={}",
                peer_identity_, request_id, e.what());
    reply = make_status(Code::kInternal, e.what());
  }
  --serving_;
  last_received_ = std::max(last_received_, Clock::now());
  reply.set_request_id(request_id);
  if (closing_) {
    log_->warn(
        "peer={} request_id={} event=reply_not_delivered "
        "reason=\"the connection closed before the reply was sent\"",
        peer_identity_, request_id);
    if (options_.on_undelivered) options_.on_undelivered(peer_identity_, stub);
    co_return;
  }
  enqueue(reply);
}

template <typename S>
awaitable<void> BasicConnection<S>::writer() {
  auto self = this->shared_from_this();
  while (true) {
    if (queue_.empty()) {
      if (closing_) break;
      write_signal_.expires_at(Clock::time_point::max());
      co_await write_signal_.async_wait(as_tuple(use_awaitable));
      continue;
    }
    writing_ = true;
    auto [ec, n] = co_await write_all(stream_, asio::buffer(queue_.front()));
    writing_ = false;
    if (ec) {
      if (!closing_) {
        log_->warn("peer={} event=write_failed error=\"{}\"", peer_identity_,
                   ec.message());
      }
      queue_.clear();
      queued_bytes_ = 0;
      shutdown("write failed");
      break;
    }
    queued_bytes_ -= queue_.front().size();
    queue_.pop_front();
    last_sent_ = Clock::now();
  }
  if constexpr (kIsTls<S>) {
    // Graceful TLS close, bounded in time; then the socket goes.
    co_await (stream_.shutdown() || sleep_for(kGoodbyeGrace));
  }
  std::error_code ignored;
  stream_.lowest_layer().close(ignored);
  close_deadline_.cancel();
}

template <typename S>
awaitable<void> BasicConnection<S>::heartbeat() {
  auto self = this->shared_from_this();
  auto& timer = heartbeat_tick_;
  const auto tick = std::max(
      std::chrono::milliseconds(10),
      std::min(options_.heartbeat_interval, options_.idle_timeout) / 4);
  while (!closing_) {
    timer.expires_after(tick);
    co_await timer.async_wait(as_tuple(use_awaitable));
    if (closing_) break;
    const auto now = Clock::now();
    if (serving_ == 0 && now - last_received_ > options_.idle_timeout) {
      log_->warn("peer={} event=idle_timeout idle_ms={}", peer_identity_,
                 std::chrono::duration_cast<std::chrono::milliseconds>(
                     now - last_received_)
                     .count());
      shutdown("idle timeout");
      break;
    }
    if (now - last_sent_ >= options_.heartbeat_interval && queue_.empty()) {
      v1::Envelope beat;
      beat.mutable_heartbeat()->set_sent_unix_ms(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::system_clock::now().time_since_epoch())
              .count()));
      enqueue(beat);
      last_sent_ = now;  // Do not queue another before this one is out.
    }
  }
}

template <typename S>
void BasicConnection<S>::enqueue(const v1::Envelope& envelope) {
  if (closing_ && !envelope.has_status() && !envelope.has_goodbye()) return;
  std::string bytes;
  try {
    bytes = frame_bytes(envelope, options_.max_frame_size);
  } catch (const Error& e) {
    log_->error("peer={} event=frame_too_large error=\"{}\"", peer_identity_,
                e.what());
    if (envelope.request_id() != 0 && !envelope.has_status()) {
      enqueue(make_status(e.code(), e.what(), envelope.request_id()));
    }
    return;
  }
  if (queued_bytes_ + bytes.size() > options_.max_queued_bytes) {
    log_->warn(
        "peer={} event=backpressure queued_bytes={} limit={} action=close",
        peer_identity_, queued_bytes_, options_.max_queued_bytes);
    // Drop what is queued, but not the frame being written: the async write
    // still reads it (cancelled below, the writer then drops it).
    if (writing_ && !queue_.empty()) {
      queue_.erase(std::next(queue_.begin()), queue_.end());
      queued_bytes_ = queue_.front().size();
    } else {
      queue_.clear();
      queued_bytes_ = 0;
    }
    shutdown("the peer does not read its messages");
    std::error_code ignored;
    stream_.lowest_layer().cancel(ignored);  // Abort the blocked write.
    return;
  }
  queued_bytes_ += bytes.size();
  queue_.push_back(std::move(bytes));
  write_signal_.cancel();
}

template <typename S>
std::future<v1::Envelope> BasicConnection<S>::request_async(
    v1::Envelope request, std::chrono::milliseconds deadline) {
  auto self = this->shared_from_this();
  return asio::co_spawn(
      strand_,
      [self, request = std::move(request),
       deadline]() mutable -> awaitable<v1::Envelope> {
        co_return co_await self->request(std::move(request), deadline);
      },
      asio::use_future);
}

template <typename S>
awaitable<v1::Envelope> BasicConnection<S>::request(
    v1::Envelope request, std::chrono::milliseconds deadline,
    std::uint64_t* sent_id) {
  auto self = this->shared_from_this();
  if (!open_ || closing_) {
    fail(Code::kUnavailable, "the connection to '{}' is closed",
         peer_identity_);
  }
  const std::uint64_t id = next_request_id_++;
  request.set_request_id(id);
  asio::steady_timer timer(strand_, deadline);
  std::optional<v1::Envelope> reply;
  pending_[id] = Pending{&timer, &reply};
  enqueue(request);
  if (sent_id) *sent_id = id;
  // The frame is queued; do not hold the message's payload (a batch of
  // inputs) while waiting for the reply. (Move-assignment frees it; Clear()
  // would keep the string capacity.)
  request = v1::Envelope();
  co_await timer.async_wait(as_tuple(use_awaitable));
  pending_.erase(id);
  if (!reply) {
    if (!open_) {
      fail(Code::kUnavailable,
           "the connection to '{}' closed before request {} was answered",
           peer_identity_, id);
    }
    fail(Code::kDeadlineExceeded, "'{}' did not answer request {} within {} ms",
         peer_identity_, id, deadline.count());
  }
  if (reply->has_status() && reply->status().code() != v1::CODE_OK) {
    throw Error(static_cast<Code>(reply->status().code()),
                reply->status().message());
  }
  co_return std::move(*reply);
}

template <typename S>
void BasicConnection<S>::send(v1::Envelope envelope) {
  auto self = this->shared_from_this();
  asio::post(strand_, [self, envelope = std::move(envelope)] {
    self->enqueue(envelope);
  });
}

template <typename S>
void BasicConnection<S>::close(const std::string& reason) {
  auto self = this->shared_from_this();
  asio::post(strand_, [self, reason] {
    if (self->closing_) return;
    v1::Envelope bye;
    bye.mutable_goodbye()->set_reason(reason);
    self->enqueue(bye);
    self->shutdown(reason);
  });
}

template <typename S>
void BasicConnection<S>::shutdown(const std::string& reason) {
  if (closing_) return;
  closing_ = true;
  open_ = false;
  log_->info("peer={} event=closed reason=\"{}\"", peer_identity_, reason);
  for (auto& [id, pending] : pending_) pending.timer->cancel();
  write_signal_.cancel();
  heartbeat_tick_.cancel();
  // Whatever is still queued gets a grace period (the writer flushes it and
  // closes the socket); then the socket goes regardless.
  auto self = this->shared_from_this();
  close_deadline_.expires_after(kGoodbyeGrace * 2);
  close_deadline_.async_wait([self](const std::error_code& ec) {
    if (ec) return;  // The writer closed the socket in time.
    std::error_code ignored;
    self->stream_.lowest_layer().close(ignored);
  });
  if (on_close_) {
    auto handler = std::move(on_close_);
    on_close_ = nullptr;
    handler(reason);
  }
}

template class BasicConnection<TlsStream>;
template class BasicConnection<asio::ip::tcp::socket>;

}  // namespace chorus::protocol
