#include "chorus/node/session.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/node/service.hpp"
#include "chorus/protocol/offload.hpp"
#include "chorus/protocol/task_codec.hpp"

namespace chorus::node {

using asio::awaitable;
using asio::use_awaitable;

struct NodeSession::Impl {
  asio::io_context& io;
  asio::thread_pool& pool;
  NodeService& service;
  SessionOptions options;
  std::unique_ptr<protocol::Client> client;
  std::shared_ptr<spdlog::logger> log = log::get("node");

  Impl(asio::io_context& i, asio::thread_pool& p, NodeService& s,
       SessionOptions o)
      : io(i), pool(p), service(s), options(std::move(o)) {}

  using Outcome = protocol::Outcome;
  using PoolCall = protocol::PoolCall;  // Work off the network thread.

  awaitable<Outcome> dispatch(const v1::Envelope& request) {
    auto call = std::make_shared<PoolCall>(co_await asio::this_coro::executor);
    switch (request.body_case()) {
      case v1::Envelope::kPredictRequest: {
        std::shared_ptr<PredictJob> job;
        Outcome admitted = protocol::run_caught([&] {
          job = service.admit_predict(request);
          return v1::Envelope{};
        });
        if (admitted.error) co_return admitted;
        if (auto wait = NodeService::wait_of(*job); wait.count() > 0) {
          asio::steady_timer timer(co_await asio::this_coro::executor, wait);
          co_await timer.async_wait(
              asio::experimental::as_tuple(use_awaitable));
        }
        call->work = [this, job] { return service.run_predict(*job); };
        break;
      }
      case v1::Envelope::kModelPush:
        // Storing writes and fsyncs a file: not on the network thread.
        call->work = [this, request] {
          return service.receive_model_chunk(request);
        };
        break;
      case v1::Envelope::kAdaptRequest:
        call->work = [this, request] { return service.adapt(request); };
        break;
      default: {
        Outcome refused;
        refused.error = Error(Code::kUnimplemented,
                              "this node does not serve this request");
        co_return refused;
      }
    }
    auto finished = protocol::start_on_pool(pool, call);
    co_await std::move(finished);
    co_return call->result;
  }

  awaitable<v1::Envelope> handle(const std::string& peer,
                                 const v1::Envelope& request) {
    const auto t0 = std::chrono::steady_clock::now();
    Outcome outcome = co_await dispatch(request);
    const auto latency = std::chrono::steady_clock::now() - t0;
    const auto& error = outcome.error;
    try {
      service.record(peer, request, error ? error->code() : Code::kOk,
                     error ? error->what() : "", latency);
    } catch (const Error& e) {
      log->error("event=audit_failed error=\"{}\"", e.what());
    }
    if (error) {
      log->info("peer={} request_id={} event=refused code={} error=\"{}\"",
                peer, request.request_id(), code_name(error->code()),
                error->what());
      co_return protocol::make_status(error->code(), error->what(),
                                      request.request_id());
    }
    co_return std::move(outcome.reply);
  }
};

NodeSession::NodeSession(asio::io_context& io, asio::thread_pool& pool,
                         NodeService& service, SessionOptions options)
    : impl_(std::make_unique<Impl>(io, pool, service, std::move(options))) {
  auto* impl = impl_.get();
  // The handler learns the peer from the connection it serves.
  auto peer = std::make_shared<std::string>();
  impl->client = std::make_unique<protocol::Client>(
      io, impl->options.host, impl->options.port, impl->options.tls,
      impl->options.channel, impl->options.backoff,
      [impl] { return impl->service.hello(); },
      [impl, peer](const v1::Envelope& request) -> awaitable<v1::Envelope> {
        v1::Envelope reply = co_await impl->handle(*peer, request);
        co_return reply;
      },
      [impl, peer](std::shared_ptr<protocol::Connection> c,
                   const v1::Welcome& w) {
        *peer = c->peer_identity();
        // A task this node's expert does not fit: say why on this end too,
        // and try again later (slowly) in case the coordinator's changes.
        if (auto why = impl->service.accept_task(protocol::task_of(w))) {
          throw Error(
              Code::kInvalidArgument,
              fmt::format("this node does not fit the coordinator's task: {}",
                          *why));
        }
        impl->log->info("event=welcomed coordinator={} round={}",
                        w.coordinator(), w.round());
      });
}

NodeSession::~NodeSession() = default;

void NodeSession::start() { impl_->client->start(); }
void NodeSession::stop() { impl_->client->stop(); }
int NodeSession::sessions() const { return impl_->client->sessions(); }
bool NodeSession::connected() const {
  auto c = impl_->client->connection();
  return c && c->is_open();
}

}  // namespace chorus::node
