// bench_coordinator: one fusion round against many lightweight nodes, over
// loopback mTLS: wall time, payload bytes and the coordinator's memory as the
// number of nodes grows. The cost per node should stay flat.
//
//   bench_coordinator [--nodes 5,100,1000] [--pool N] [--dtypes float32,uint8]
//                     [--repeat N] [--json FILE]
//
// Each node count runs in a fresh coordinator process (so its RSS is its
// own), whose nodes live in child processes of at most 250 nodes each: a
// tiny MLP expert each (784 → 16 → 4), a share of the ten labels, no budget.
// The round queries every node for the whole pool (`--pool` inputs of 28×28
// floats) in batches of 256, fuses with bplus (cheap: the round is fan-out
// bound), and pushes nothing. "MB sent"/"MB recv" are tensor payload (requests
// and answers); "wire MB" is what crossed the loopback interface during the
// round, both ways (/proc/net/dev: TCP/IP headers, TLS records, frames and
// payload).
//
// --dtypes: the task's input dtype; float32 sends 4 bytes per pixel, uint8
// (protocol 1.2) one. Every dtype runs on the same pool, quantised to bytes,
// alternating, --repeat times; the table ends with the uint8/float32 ratio
// of the wire bytes and of the round time (medians).
#include <fmt/format.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <asio/io_context.hpp>
#include <asio/signal_set.hpp>
#include <asio/thread_pool.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../support/bench.hpp"
#include "chorus/coordinator/coordinator.hpp"
#include "chorus/coordinator/registry.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/memory.hpp"
#include "chorus/core/task.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"
#include "chorus/protocol/certs.hpp"

namespace co = chorus::coordinator;
namespace nd = chorus::node;
namespace fu = chorus::fusion;
namespace pr = chorus::protocol;
namespace fs = std::filesystem;
namespace bench = chorus::bench;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> kSpace = {"c0", "c1", "c2", "c3", "c4",
                                         "c5", "c6", "c7", "c8", "c9"};

std::string node_name(int i) { return fmt::format("node{:04d}", i); }

// Nodes served by one child process.
constexpr int kNodesPerProcess = 250;

// Bytes the loopback interface has carried so far (received, both
// directions: /proc/net/dev). The round is what runs on it meanwhile.
long long loopback_bytes() {
  std::ifstream in("/proc/net/dev");
  std::string line;
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(' '));
    if (name != "lo") continue;
    std::istringstream fields(line.substr(colon + 1));
    long long rx = -1;
    fields >> rx;
    return rx;
  }
  return -1;
}

// --- the nodes' process
// -------------------------------------------------------

// Nodes first .. first + count − 1.
int serve_nodes(int first, int count, std::uint16_t port, const fs::path& pki) {
  torch::set_num_threads(1);
  asio::io_context io;
  asio::thread_pool pool(1);
  std::vector<std::unique_ptr<nd::NodeService>> services;
  std::vector<std::unique_ptr<nd::NodeSession>> sessions;
  const auto ca = chorus::read_file(pki / "ca.crt");
  for (int i = first; i < first + count; ++i) {
    auto gen = fu::make_generator(static_cast<std::uint64_t>(i));
    auto model = fu::make_classifier(fu::ModelSpec{.arch = "mlp",
                                                   .input_shape = {1, 28, 28},
                                                   .num_classes = 4,
                                                   .hidden = {16}},
                                     gen);
    nd::ExpertOptions eo;
    eo.input_shape = {1, 28, 28};
    for (int j = 0; j < 4; ++j)
      eo.labels.push_back(kSpace[static_cast<std::size_t>((i + j * 3) % 10)]);
    nd::NodeServiceOptions so;
    so.state_dir = pki / "state" / node_name(i);
    so.policy.budget.max_batch = 256;
    services.push_back(std::make_unique<nd::NodeService>(
        nd::make_builtin_expert(model, eo), so));
    nd::SessionOptions s;
    s.host = "127.0.0.1";
    s.port = port;
    s.tls = {ca, chorus::read_file(pki / (node_name(i) + ".crt")),
             chorus::read_file(pki / (node_name(i) + ".key"))};
    s.backoff.initial = 50ms;
    s.backoff.max = 1000ms;
    sessions.push_back(
        std::make_unique<nd::NodeSession>(io, pool, *services.back(), s));
    sessions.back()->start();
  }
  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](auto, int) {
    for (auto& s : sessions) s->stop();
    io.stop();
  });
  io.run();
  pool.join();
  return 0;
}

// --- one coordinator run
// --------------------------------------------------------

int run_one(int count, std::int64_t pool_size, chorus::InputDType dtype,
            const fs::path& out_json) {
  const long rss_start = bench::status_kb("VmRSS:");
  const auto dir = fs::temp_directory_path() /
                   fmt::format("chorus-bench-coord-{}", getpid());
  fs::create_directories(dir);
  auto ca = pr::make_ca("bench-ca");
  auto coordinator_keys = pr::issue_certificate(
      ca, "coordinator", pr::CertRole::kCoordinator, {"127.0.0.1"});
  chorus::write_file_atomic(dir / "ca.crt", ca.cert_pem);
  std::vector<std::string> roster;
  for (int i = 0; i < count; ++i) {
    roster.push_back(node_name(i));
    auto keys =
        pr::issue_certificate(ca, roster.back(), pr::CertRole::kNode, {});
    chorus::write_file_atomic(dir / (roster.back() + ".crt"), keys.cert_pem);
    chorus::write_file_atomic(dir / (roster.back() + ".key"), keys.key_pem);
  }

  asio::io_context io;
  co::RegistryOptions ro;
  ro.port = 0;
  ro.tls = {ca.cert_pem, coordinator_keys.cert_pem, coordinator_keys.key_pem};
  const chorus::TaskSpec task{.name = "bench",
                              .labels = chorus::LabelSpace(kSpace),
                              .input_shape = {1, 28, 28},
                              .dtype = dtype};
  ro.task = task;
  co::NodeRegistry registry(io, co::Roster(roster), ro);
  registry.start();
  std::thread io_thread([&] { io.run(); });
  // The nodes, at most kNodesPerProcess to a child process.
  std::vector<pid_t> nodes;
  for (int first = 0; first < count; first += kNodesPerProcess) {
    nodes.push_back(bench::spawn_self(
        {"bench_coordinator", "--serve-nodes",
         std::to_string(std::min(kNodesPerProcess, count - first)), "--first",
         std::to_string(first), "--port", std::to_string(registry.port()),
         "--pki", dir.string()}));
  }

  auto gen = fu::make_generator(0);
  // Pixels as bytes would give them, for every dtype alike.
  co::PoolData data{
      .inputs =
          torch::randint(0, 256, {pool_size, 1, 28, 28}, gen, torch::kFloat32)
              .div_(255.0),
      .fusion_index = torch::arange(100, torch::kLong),
      .fusion_labels = torch::randint(0, 10, {100}, gen, torch::kLong)};
  co::CoordinatorOptions o;
  o.task = task;
  o.algorithm = "bplus";
  o.min_nodes = static_cast<std::size_t>(count);
  o.quorum_timeout = 120s;
  o.settle = 0ms;
  o.request_deadline = 120s;
  o.query_batch = 256;
  o.run_dir = dir / "run";
  const auto t_join = std::chrono::steady_clock::now();
  registry.wait_for_quorum(o.min_nodes, o.quorum_timeout);
  const long long loopback_before = loopback_bytes();
  const double join_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_join)
          .count();
  const long rss_joined = bench::status_kb("VmRSS:");
  co::Coordinator coordinator(registry, data, o);
  auto reports = coordinator.run();
  const auto& r = reports.at(0);
  const long rss_after = bench::status_kb("VmRSS:");
  const long rss_peak = bench::status_kb("VmHWM:");

  const long long wire_bytes = loopback_bytes() - loopback_before;
  registry.stop("bench over");
  for (auto pid : nodes) kill(pid, SIGTERM);
  for (auto pid : nodes) {
    int status = 0;
    waitpid(pid, &status, 0);
  }
  io.stop();
  io_thread.join();
  std::error_code ec;
  fs::remove_all(dir, ec);

  nlohmann::json out{{"nodes", count},
                     {"pool", pool_size},
                     {"dtype", chorus::dtype_name(dtype)},
                     {"wire_bytes", wire_bytes},
                     {"answered", r.experts.size()},
                     {"join_seconds", join_s},
                     {"round_seconds", r.seconds},
                     {"inputs_queried", r.inputs_queried},
                     {"bytes_sent", r.bytes_sent},
                     {"bytes_received", r.bytes_received},
                     {"rss_start_kb", rss_start},
                     {"rss_joined_kb", rss_joined},
                     {"rss_after_kb", rss_after},
                     {"rss_peak_kb", rss_peak}};
  chorus::write_file_atomic(out_json, out.dump() + "\n");
  return r.experts.size() == static_cast<std::size_t>(count) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  chorus::tune_allocator();
  std::vector<int> counts = {5, 100, 1000};
  std::int64_t pool_size = 1000;
  std::string json_path = "bench_coordinator.json";
  int serve = 0, serve_first = 0, one = 0;
  std::uint16_t port = 0;
  std::string pki, one_json;
  std::vector<std::string> dtypes = {"float32"};
  std::string one_dtype = "float32";
  int repeat = 1;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] {
      return i + 1 < argc ? std::string(argv[++i]) : std::string();
    };
    const std::string a = argv[i];
    if (a == "--nodes") {
      counts.clear();
      std::stringstream list(next());
      for (std::string item; std::getline(list, item, ',');)
        counts.push_back(std::stoi(item));
    } else if (a == "--pool") {
      pool_size = std::stoll(next());
    } else if (a == "--dtypes") {
      dtypes.clear();
      std::stringstream list(next());
      for (std::string item; std::getline(list, item, ',');)
        dtypes.push_back(item);
    } else if (a == "--repeat") {
      repeat = std::stoi(next());
    } else if (a == "--dtype") {  // Internal: one coordinator run's dtype.
      one_dtype = next();
    } else if (a == "--json") {
      json_path = next();
    } else if (a == "--serve-nodes") {  // Internal: the nodes' process.
      serve = std::stoi(next());
    } else if (a == "--first") {  // Internal: its first node.
      serve_first = std::stoi(next());
    } else if (a == "--port") {
      port = static_cast<std::uint16_t>(std::stoi(next()));
    } else if (a == "--pki") {
      pki = next();
    } else if (a == "--one") {  // Internal: one coordinator run.
      one = std::stoi(next());
    } else if (a == "--one-json") {
      one_json = next();
    } else {
      std::fprintf(stderr,
                   "usage: bench_coordinator [--nodes 5,100,1000] [--pool N] "
                   "[--dtypes float32,uint8] [--repeat N] [--json FILE]\n");
      return 2;
    }
  }
  chorus::log::Options quiet;
  quiet.level = spdlog::level::err;
  chorus::log::init(quiet);
  try {
    if (serve > 0) return serve_nodes(serve_first, serve, port, pki);
    if (one > 0) {
      torch::set_num_threads(1);
      return run_one(one, pool_size, chorus::parse_input_dtype(one_dtype),
                     one_json);
    }

    for (const auto& d : dtypes) (void)chorus::parse_input_dtype(d);
    CHORUS_CHECK(repeat >= 1, "--repeat must be at least 1");
    std::printf("%6s %8s %9s %12s %10s %10s %10s %12s %12s %12s %12s\n",
                "nodes", "dtype", "round s", "ms per node", "MB sent",
                "MB recv", "wire MB", "KB per node", "coord RSS MB",
                "RSS KB/node", "peak RSS MB");
    nlohmann::json runs = nlohmann::json::array();
    std::map<std::string, std::vector<double>> wire, seconds;
    for (int rep = 0; rep < repeat; ++rep)
      for (int count : counts)
        for (const auto& dtype : dtypes) {
          const auto tmp = fs::temp_directory_path() /
                           fmt::format("bench-coord-{}.json", count);
          const pid_t pid = bench::spawn_self(
              {"bench_coordinator", "--one", std::to_string(count), "--pool",
               std::to_string(pool_size), "--dtype", dtype, "--one-json",
               tmp.string()});
          int status = 0;
          waitpid(pid, &status, 0);
          CHORUS_CHECK_CODE(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                            chorus::Code::kInternal,
                            "the run with {} nodes failed (status {})", count,
                            status);
          auto r = nlohmann::json::parse(chorus::read_file(tmp));
          fs::remove(tmp);
          const double n = count;
          const double sent = r["bytes_sent"].get<double>(),
                       recv = r["bytes_received"].get<double>();
          const double rss_growth_kb =
              r["rss_after_kb"].get<double>() - r["rss_start_kb"].get<double>();
          const double wire_mb = r["wire_bytes"].get<double>() / 1e6;
          wire[dtype].push_back(wire_mb);
          seconds[dtype].push_back(r["round_seconds"].get<double>());
          std::printf(
              "%6d %8s %9.2f %12.1f %10.1f %10.2f %10.1f %12.1f %12.1f %12.1f "
              "%12.1f\n",
              count, dtype.c_str(), r["round_seconds"].get<double>(),
              1000 * r["round_seconds"].get<double>() / n, sent / 1e6,
              recv / 1e6, wire_mb, (sent + recv) / 1e3 / n,
              r["rss_after_kb"].get<double>() / 1024, rss_growth_kb / n,
              r["rss_peak_kb"].get<double>() / 1024);
          std::fflush(stdout);
          r["ms_per_node"] = 1000 * r["round_seconds"].get<double>() / n;
          r["rss_growth_kb_per_node"] = rss_growth_kb / n;
          runs.push_back(r);
        }
    std::printf(
        "pool=%lld inputs of 1x28x28 per node, batch 256, bplus, cores=%u, "
        "at most %d nodes per child process, coordinator.max_inflight_mb 64\n",
        static_cast<long long>(pool_size), std::thread::hardware_concurrency(),
        kNodesPerProcess);
    // Flat cost per node: the largest node count against 100.
    std::map<int, double> ms_per_node;
    for (const auto& r : runs)
      ms_per_node[r["nodes"].get<int>()] = r["ms_per_node"].get<double>();
    std::map<int, double> rss_mb;
    for (const auto& r : runs)
      rss_mb[r["nodes"].get<int>()] = r["rss_after_kb"].get<double>() / 1024;
    if (ms_per_node.count(100) && ms_per_node.rbegin()->first > 100) {
      const auto& [most, ms] = *ms_per_node.rbegin();
      std::printf("time per node at %d nodes / at 100: %.2f\n", most,
                  ms / ms_per_node[100]);
      // What one more node costs, without the process's fixed baseline.
      std::printf(
          "coordinator RSS growth per node from 100 to %d nodes: %.0f KB\n",
          most, (rss_mb[most] - rss_mb[100]) * 1024 / (most - 100));
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    if (wire.count("float32") && wire.count("uint8") && counts.size() == 1) {
      std::printf(
          "uint8 / float32 (medians of %d): wire bytes %.3f, round time %.3f\n",
          repeat, median(wire["uint8"]) / median(wire["float32"]),
          median(seconds["uint8"]) / median(seconds["float32"]));
    }
    nlohmann::json out{
        {"benchmark", "coordinator"}, {"pool", pool_size}, {"runs", runs}};
    chorus::write_file_atomic(json_path, out.dump(2) + "\n");
    std::printf("wrote %s\n", json_path.c_str());
  } catch (const chorus::Error& e) {
    std::fprintf(stderr, "bench_coordinator: %s\n",
                 chorus::describe(e).c_str());
    return 1;
  }
  return 0;
}
