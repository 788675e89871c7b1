#pragma once

#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "chorus/protocol/channel.hpp"

/// The node's side of the conversation: dial the coordinator, say Hello,
/// answer its requests through a `NodeService`, reconnect when the
/// connection ends. Inference runs on a worker pool, off the network thread,
/// so a slow expert never delays heartbeats.
namespace chorus::node {

class NodeService;

/// Where and how a node connects.
struct SessionOptions {
  std::string host = "localhost";
  std::uint16_t port = 7700;
  protocol::TlsMaterial tls;
  /// Checked against the coordinator's certificate (empty: `host`).
  std::string server_name;
  /// Reads the TLS material again before each connection (a renewed
  /// certificate is used at the next reconnect); none: `tls` throughout.
  std::function<protocol::TlsMaterial()> tls_source;
  protocol::ChannelOptions channel;
  protocol::Backoff backoff;
};

/// A running node. Construct, `start`, and run the io_context.
class NodeSession {
 public:
  /// `pool` runs inference; nodes in one process may share it.
  NodeSession(asio::io_context& io, asio::thread_pool& pool,
              NodeService& service, SessionOptions options);
  ~NodeSession();

  /// Starts dialling.
  void start();
  /// Says Goodbye and stops reconnecting.
  void stop();
  /// Sessions that reached Welcome so far.
  int sessions() const;
  /// Whether a connection is up.
  bool connected() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::node
