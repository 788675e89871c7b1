// bench_transport: the chorus.v1 channel over loopback, mutual TLS against
// the same channel code on plain TCP, in one run.
//
//   bench_transport [--requests N] [--messages N] [--rounds N] [--json FILE]
//
// Round trip: N sequential Predict requests of one 28×28 float32 image,
// echoed back (p50, p99). Throughput: 4 MiB tensors sent to the node, 4 in
// flight, each answered by a small reply (MiB/s of request payload). Each
// figure is the median of --rounds interleaved TLS/TCP measurements.
#include <algorithm>
#include <asio/io_context.hpp>
#include <asio/use_awaitable.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <thread>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/channel.hpp"
#include "chorus/protocol/codec.hpp"

namespace pr = chorus::protocol;
namespace v1 = chorus::v1;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using asio::ip::tcp;

namespace {

v1::Envelope tensor_request(std::int64_t elements) {
  v1::Envelope e;
  auto* t = e.mutable_predict_request()->mutable_inputs();
  t->set_dtype(v1::DTYPE_FLOAT32);
  if (elements == 784) {
    for (auto d : {1, 1, 28, 28}) t->add_shape(d);
  } else {
    t->add_shape(elements);
  }
  t->set_data(std::string(static_cast<std::size_t>(elements) * 4, '\x01'));
  return e;
}

// The node: echoes small inputs, acknowledges large ones with one float.
asio::awaitable<v1::Envelope> echo(const v1::Envelope& request) {
  v1::Envelope reply;
  const auto& in = request.predict_request().inputs();
  auto* out = reply.mutable_predict_response()->mutable_outputs();
  if (in.data().size() <= 4096) {
    *out = in;
  } else {
    out->set_dtype(v1::DTYPE_FLOAT32);
    out->add_shape(1);
    out->set_data(std::string(4, '\0'));
  }
  co_return reply;
}

template <typename Conn>
struct Result {
  double p50_us = 0, p99_us = 0, mib_per_s = 0;
};

template <typename Conn>
Result<Conn> measure(Conn& conn, int requests, int messages) {
  Result<Conn> r;
  auto small = tensor_request(784);
  for (int i = 0; i < 200; ++i)
    conn.request_async(small, 5s).get();  // Warm up.
  std::vector<double> rtt;
  rtt.reserve(requests);
  for (int i = 0; i < requests; ++i) {
    auto t0 = Clock::now();
    conn.request_async(small, 5s).get();
    rtt.push_back(
        std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::sort(rtt.begin(), rtt.end());
  r.p50_us = rtt[rtt.size() / 2];
  r.p99_us = rtt[std::min(rtt.size() - 1, rtt.size() * 99 / 100)];

  auto big = tensor_request(1 << 20);  // 4 MiB of float32.
  const double mib = 4.0;
  std::deque<std::future<v1::Envelope>> in_flight;
  auto t0 = Clock::now();
  for (int i = 0; i < messages; ++i) {
    if (in_flight.size() == 4) {
      in_flight.front().get();
      in_flight.pop_front();
    }
    in_flight.push_back(conn.request_async(big, 30s));
  }
  while (!in_flight.empty()) {
    in_flight.front().get();
    in_flight.pop_front();
  }
  r.mib_per_s =
      messages * mib / std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

template <typename Conn>
Result<Conn> median_of(std::vector<Result<Conn>> runs) {
  auto median = [&](auto field) {
    std::vector<double> v;
    for (const auto& r : runs) v.push_back(r.*field);
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  return {median(&Result<Conn>::p50_us), median(&Result<Conn>::p99_us),
          median(&Result<Conn>::mib_per_s)};
}

}  // namespace

int main(int argc, char** argv) {
  int requests = 5000, messages = 100, rounds = 3;
  std::string json_path = "bench_transport.json";
  for (int i = 1; i < argc; ++i) {
    auto next = [&] { return i + 1 < argc ? argv[++i] : ""; };
    if (!std::strcmp(argv[i], "--requests"))
      requests = std::max(10, std::atoi(next()));
    else if (!std::strcmp(argv[i], "--messages"))
      messages = std::max(4, std::atoi(next()));
    else if (!std::strcmp(argv[i], "--rounds"))
      rounds = std::max(1, std::atoi(next()));
    else if (!std::strcmp(argv[i], "--json"))
      json_path = next();
    else {
      std::fprintf(stderr,
                   "usage: bench_transport [--requests N] [--messages N] "
                   "[--rounds N] [--json FILE]\n");
      return 2;
    }
  }
  chorus::log::Options quiet;
  quiet.level = spdlog::level::warn;
  chorus::log::init(quiet);
  try {
    pr::ChannelOptions options;
    options.max_frame_size = 64u << 20;
    auto ca = pr::make_ca("bench-ca");
    auto coord_keys = pr::issue_certificate(
        ca, "coordinator", pr::CertRole::kCoordinator, {"localhost"});
    auto node_keys = pr::issue_certificate(ca, "node", pr::CertRole::kNode, {});

    // Coordinator and node each on their own thread, as in deployment.
    asio::io_context coord_io, node_io;
    auto coord_guard = asio::make_work_guard(coord_io);
    auto node_guard = asio::make_work_guard(node_io);
    std::promise<std::shared_ptr<pr::Connection>> tls_conn;
    pr::Server server(
        coord_io, tcp::endpoint(asio::ip::address_v4::loopback(), 0),
        {ca.cert_pem, coord_keys.cert_pem, coord_keys.key_pem}, options,
        pr::Welcome{}, [](auto&&...) { return pr::Admission{}; },
        [&](std::shared_ptr<pr::Connection> c, const pr::Hello&) {
          c->start(echo, {});
          tls_conn.set_value(c);
        });
    server.start();
    pr::Client client(
        node_io, "localhost", server.port(),
        {ca.cert_pem, node_keys.cert_pem, node_keys.key_pem}, options,
        pr::Backoff{}, [] { return pr::Hello{}; }, echo);
    client.start();

    // Plain TCP: the same connection code, no TLS.
    tcp::acceptor acceptor(coord_io,
                           tcp::endpoint(asio::ip::address_v4::loopback(), 0));
    tcp::socket node_socket(node_io), coord_socket(coord_io);
    node_socket.connect(acceptor.local_endpoint());
    acceptor.accept(coord_socket);
    node_socket.set_option(tcp::no_delay(true));
    coord_socket.set_option(tcp::no_delay(true));
    auto plain_coord = std::make_shared<pr::PlainConnection>(
        std::move(coord_socket), options, "node", "bench");
    auto plain_node = std::make_shared<pr::PlainConnection>(
        std::move(node_socket), options, "coordinator", "bench");
    plain_coord->start(echo, {});
    plain_node->start(echo, {});

    std::thread coord_thread([&] { coord_io.run(); });
    std::thread node_thread([&] { node_io.run(); });
    auto tls = tls_conn.get_future().get();

    // Interleaved rounds, medians: on a shared 2-core VM the order and the
    // moment of a measurement move it by 10% or more.
    std::vector<Result<pr::Connection>> tls_runs;
    std::vector<Result<pr::PlainConnection>> tcp_runs;
    for (int r = 0; r < rounds; ++r) {
      tls_runs.push_back(measure(*tls, requests, messages));
      tcp_runs.push_back(measure(*plain_coord, requests, messages));
    }
    auto t = median_of(tls_runs);
    auto p = median_of(tcp_runs);

    std::printf("%-34s %12s %12s %10s\n", "metric", "mTLS", "plain TCP",
                "TLS/TCP");
    std::printf("%-34s %12.1f %12.1f %10.2f\n",
                "round trip p50, 28x28 float (us)", t.p50_us, p.p50_us,
                t.p50_us / p.p50_us);
    std::printf("%-34s %12.1f %12.1f %10.2f\n",
                "round trip p99, 28x28 float (us)", t.p99_us, p.p99_us,
                t.p99_us / p.p99_us);
    std::printf("%-34s %12.1f %12.1f %10.2f\n",
                "throughput, 4 MiB tensors (MiB/s)", t.mib_per_s, p.mib_per_s,
                t.mib_per_s / p.mib_per_s);
    std::printf("requests=%d messages=%d rounds=%d (medians) cores=%u\n",
                requests, messages, rounds,
                std::thread::hardware_concurrency());

    nlohmann::json out{
        {"benchmark", "transport"},
        {"requests", requests},
        {"messages", messages},
        {"rounds", rounds},
        {"tls",
         {{"p50_us", t.p50_us},
          {"p99_us", t.p99_us},
          {"mib_per_s", t.mib_per_s}}},
        {"tcp",
         {{"p50_us", p.p50_us},
          {"p99_us", p.p99_us},
          {"mib_per_s", p.mib_per_s}}},
        {"throughput_ratio_tls_over_tcp", t.mib_per_s / p.mib_per_s}};
    chorus::write_file_atomic(json_path, out.dump(2) + "\n");
    std::printf("wrote %s\n", json_path.c_str());

    client.stop();
    tls->close("done");
    plain_coord->close("done");
    server.stop();
    std::this_thread::sleep_for(100ms);
    coord_guard.reset();
    node_guard.reset();
    coord_io.stop();
    node_io.stop();
    coord_thread.join();
    node_thread.join();
  } catch (const chorus::Error& e) {
    std::fprintf(stderr, "bench_transport: %s\n", chorus::describe(e).c_str());
    return 1;
  }
  return 0;
}
