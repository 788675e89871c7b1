#include "chorus/node/session.hpp"

#include <asio/experimental/as_tuple.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <optional>
#include <variant>

#include "chorus/core/error.hpp"
#include "chorus/core/log.hpp"
#include "chorus/node/service.hpp"
#include "chorus/protocol/codec.hpp"
#include "chorus/protocol/offload.hpp"

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

  using Outcome = protocol::Outcome<v1::Envelope>;
  using PoolCall = protocol::PoolCall<v1::Envelope>;  // Off the network thread.

  // Requests arrive as envelopes and leave as envelopes; the service sees
  // values. Encoding an answer (a copy of its tensor) runs on the pool too.
  awaitable<Outcome> dispatch(v1::Envelope envelope) {
    auto call = std::make_shared<PoolCall>(co_await asio::this_coro::executor);
    std::optional<protocol::NodeRequest> decoded;
    Outcome refused = protocol::run_caught([&] {
      decoded = protocol::node_request_of(std::move(envelope));
      return v1::Envelope{};
    });
    if (refused.error) co_return refused;
    if (auto* predict = std::get_if<protocol::PredictCall>(&*decoded)) {
      std::shared_ptr<PredictJob> job;
      Outcome admitted = protocol::run_caught([&] {
        job = service.admit_predict(*predict);
        return v1::Envelope{};
      });
      if (admitted.error) co_return admitted;
      if (auto wait = NodeService::wait_of(*job); wait.count() > 0) {
        asio::steady_timer timer(co_await asio::this_coro::executor, wait);
        co_await timer.async_wait(asio::experimental::as_tuple(use_awaitable));
      }
      call->work = [this, job] {
        return protocol::envelope_of(service.run_predict(*job));
      };
    } else if (auto* chunk = std::get_if<protocol::ModelChunk>(&*decoded)) {
      // Storing writes and fsyncs a file: not on the network thread.
      call->work = [this, c = std::move(*chunk)] {
        return protocol::envelope_of(service.receive_model_chunk(c));
      };
    } else if (auto* w = std::get_if<protocol::WeightsCall>(&*decoded)) {
      call->work = [this, c = *w] {
        return protocol::envelope_of(service.weights(c));
      };
    } else {
      call->work = [this, a = std::get<protocol::AdaptCall>(*decoded)] {
        return protocol::envelope_of(service.adapt(a));
      };
    }
    auto finished = protocol::start_on_pool(pool, call);
    co_await std::move(finished);
    co_return std::move(call->result);
  }

  // Records what happened to a request; the error (logged) when the
  // audit log cannot be written.
  std::optional<std::string> audit(
      const protocol::AuditRecord& summary, Code outcome,
      const std::string& message, std::chrono::steady_clock::duration latency) {
    const auto& peer = summary.peer;
    try {
      service.record(summary, outcome, message, latency);
      return std::nullopt;
    } catch (const Error& e) {
      log->error("peer={} request_id={} event=audit_failed error=\"{}\"", peer,
                 summary.request_id, e.what());
      return std::string(e.what());
    }
  }

  awaitable<v1::Envelope> handle(const std::string& peer,
                                 v1::Envelope request) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto summary = protocol::audit_record_of(request, peer);
    Outcome outcome = co_await dispatch(std::move(request));
    const auto latency = std::chrono::steady_clock::now() - t0;
    const auto& error = outcome.error;
    const auto unaudited = audit(summary, error ? error->code() : Code::kOk,
                                 error ? error->what() : "", latency);
    // Fail closed: nothing leaves this node without its record.
    if (unaudited && !error) {
      co_return protocol::make_status(
          Code::kUnavailable,
          fmt::format("this node cannot write its audit record, so it "
                      "withholds the answer: {}",
                      *unaudited),
          summary.request_id);
    }
    if (error) {
      log->info("peer={} request_id={} event=refused code={} error=\"{}\"",
                peer, summary.request_id, code_name(error->code()),
                error->what());
      co_return protocol::make_status(error->code(), error->what(),
                                      summary.request_id);
    }
    co_return std::move(outcome.reply);
  }
};

NodeSession::NodeSession(asio::io_context& io, asio::thread_pool& pool,
                         NodeService& service, SessionOptions options)
    : impl_(std::make_unique<Impl>(io, pool, service, std::move(options))) {
  auto* impl = impl_.get();
  // Every refusal is audited, the transport's own included, and so is an
  // answer that could not be delivered.
  impl->options.channel.on_refused = [impl](const std::string& peer,
                                            const v1::Envelope& request,
                                            Code code,
                                            const std::string& message) {
    impl->audit(protocol::audit_record_of(request, peer), code, message, {});
  };
  impl->options.channel.on_undelivered = [impl](const std::string& peer,
                                                const v1::Envelope& request) {
    auto summary = protocol::audit_record_of(request, peer);
    summary.kind = "undelivered";
    impl->audit(summary, Code::kUnavailable,
                "answered, but the connection closed before the reply was "
                "sent",
                {});
  };
  // The handler learns the peer from the connection it serves.
  auto peer = std::make_shared<std::string>();
  impl->client = std::make_unique<protocol::Client>(
      io, impl->options.host, impl->options.port, impl->options.tls,
      impl->options.channel, impl->options.backoff,
      [impl] { return impl->service.hello(); },
      [impl, peer](v1::Envelope request) -> awaitable<v1::Envelope> {
        v1::Envelope reply = co_await impl->handle(*peer, std::move(request));
        co_return reply;
      },
      [impl, peer](std::shared_ptr<protocol::Connection> c,
                   const protocol::Welcome& w) {
        *peer = c->peer_identity();
        // A task this node's expert does not fit: say why on this end too,
        // and try again later (slowly) in case the coordinator's changes.
        if (auto why = impl->service.accept_task(w.task)) {
          throw Error(
              Code::kInvalidArgument,
              fmt::format("this node does not fit the coordinator's task: {}",
                          *why));
        }
        impl->service.welcomed(w.round);
        impl->log->info("event=welcomed coordinator={} round={}", w.coordinator,
                        w.round);
      });
  impl->client->set_server_name(impl->options.server_name);
  if (impl->options.tls_source) {
    impl->client->set_tls_source(impl->options.tls_source);
  }
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
