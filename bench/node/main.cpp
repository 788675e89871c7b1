// bench_node: a node's Predict throughput over loopback mTLS against
// in-process inference of the same model at the same batch size.
//
//   bench_node [--batches 64,256,1024] [--inputs N] [--repeat N]
//              [--threads N] [--json FILE]
//
// The node runs in a child process (so its peak RSS is its own): a built-in
// LeNet expert over the ten Fashion-MNIST classes, serving PredictRequests of
// up to 1024 inputs. This process is the coordinator: it admits the node
// and asks it for `--inputs` images through the RemoteOracle the fusion
// rounds use (requests of one batch, 4 in flight; uint8 pixels on the wire,
// as the Fashion-MNIST task sends them). The in-process side runs
// fusion::predict_proba on the same model (the same seed) with the same
// batch size and torch threads. For each batch size the two alternate
// (remote, local, remote, local, ...) --repeat times; the table shows the
// medians in images/s and their ratio (remote / local: 1 means the network
// costs nothing), and the node's peak RSS while serving.
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
#include "chorus/coordinator/registry.hpp"
#include "chorus/coordinator/remote_oracle.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/memory.hpp"
#include "chorus/core/task.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/train.hpp"
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
using Clock = std::chrono::steady_clock;

namespace {

const std::vector<std::string> kSpace = {"c0", "c1", "c2", "c3", "c4",
                                         "c5", "c6", "c7", "c8", "c9"};
constexpr std::int64_t kMaxBatch = 1024;
const fu::ModelSpec kSpec{.arch = "lenet", .num_classes = 10};

std::shared_ptr<fu::ClassifierImpl> the_model() {
  auto gen = fu::make_generator(7);
  auto model = fu::make_classifier(kSpec, gen);
  model->eval();
  return model;
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// --- the node's process --------------------------------------------------

int serve(std::uint16_t port, const fs::path& pki, int threads) {
  torch::set_num_threads(threads);
  asio::io_context io;
  asio::thread_pool pool(1);
  nd::ExpertOptions eo;
  eo.input_shape = {1, 28, 28};
  eo.labels = kSpace;
  nd::NodeServiceOptions so;
  so.state_dir = pki / "state";
  so.policy.budget.max_batch = kMaxBatch;
  // One forward pass per request, as the in-process side does.
  so.inference_batch = kMaxBatch;
  nd::NodeService service(nd::make_builtin_expert(the_model(), eo), so);
  nd::SessionOptions s;
  s.host = "127.0.0.1";
  s.port = port;
  s.tls = {chorus::read_file(pki / "ca.crt"),
           chorus::read_file(pki / "node.crt"),
           chorus::read_file(pki / "node.key")};
  s.backoff.initial = 50ms;
  nd::NodeSession session(io, pool, service, s);
  session.start();
  asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](auto, int) {
    session.stop();
    io.stop();
  });
  io.run();
  pool.join();
  return 0;
}

// --- the coordinator's side ---------------------------------------------

struct Args {
  std::vector<std::int64_t> batches = {64, 256, 1024};
  std::int64_t inputs = 8192;
  int repeat = 3;
  int threads = 2;
  std::string json = "bench_node.json";
};

int run(const Args& args) {
  torch::set_num_threads(args.threads);
  const auto dir =
      fs::temp_directory_path() / fmt::format("chorus-bench-node-{}", getpid());
  fs::create_directories(dir);
  auto ca = pr::make_ca("bench-ca");
  auto coordinator_keys = pr::issue_certificate(
      ca, "coordinator", pr::CertRole::kCoordinator, {"127.0.0.1"});
  auto node_keys = pr::issue_certificate(ca, "node", pr::CertRole::kNode, {});
  chorus::write_file_atomic(dir / "ca.crt", ca.cert_pem);
  chorus::write_file_atomic(dir / "node.crt", node_keys.cert_pem);
  chorus::write_file_atomic(dir / "node.key", node_keys.key_pem);

  asio::io_context io;
  co::RegistryOptions ro;
  ro.port = 0;
  ro.tls = {ca.cert_pem, coordinator_keys.cert_pem, coordinator_keys.key_pem};
  const chorus::TaskSpec task{.name = "bench",
                              .labels = chorus::LabelSpace(kSpace),
                              .input_shape = {1, 28, 28},
                              .dtype = chorus::InputDType::kUInt8};
  ro.task = task;
  co::NodeRegistry registry(io, co::Roster({"node"}), ro);
  registry.start();
  std::thread io_thread([&] { io.run(); });
  const pid_t node = bench::spawn_self(
      {"bench_node", "--serve", std::to_string(registry.port()), "--pki",
       dir.string(), "--threads", std::to_string(args.threads)});
  registry.wait_for_quorum(1, 60s);

  // Pixels as bytes would give them (uint8 on the wire, exact).
  auto gen = fu::make_generator(0);
  auto x =
      torch::randint(0, 256, {args.inputs, 1, 28, 28}, gen, torch::kFloat32)
          .div_(255.0);
  auto local = the_model();
  std::vector<std::int64_t> all;
  for (std::int64_t c = 0; c < 10; ++c) all.push_back(c);

  fmt::print("{:>6} {:>14} {:>14} {:>8}\n", "batch", "remote img/s",
             "local img/s", "ratio");
  nlohmann::json rows = nlohmann::json::array();
  for (auto batch : args.batches) {
    co::RemoteOracle oracle(
        10,
        {co::RemoteExpert{.info = {.name = "node", .labels = all},
                          .max_batch = kMaxBatch,
                          .link = registry.link("node")}},
        registry.executor(),
        co::RemoteOracleOptions{
            .deadline = 120s, .batch = batch, .task = task});
    std::vector<double> remote, inproc;
    double max_diff = 0;
    for (int r = 0; r < args.repeat; ++r) {
      auto t = Clock::now();
      auto answers = oracle.query(0, x);
      remote.push_back(static_cast<double>(args.inputs) / seconds_since(t));
      t = Clock::now();
      auto expected = fu::predict_proba(*local, x, batch);
      inproc.push_back(static_cast<double>(args.inputs) / seconds_since(t));
      max_diff =
          std::max(max_diff, (answers - expected).abs().max().item<double>());
    }
    CHORUS_CHECK_CODE(max_diff < 1e-4, chorus::Code::kInternal,
                      "the node answered differently from the same model "
                      "in-process (max difference {})",
                      max_diff);
    const double a = bench::median(remote), b = bench::median(inproc);
    fmt::print("{:>6} {:>14.0f} {:>14.0f} {:>8.3f}\n", batch, a, b, a / b);
    rows.push_back({{"batch", batch},
                    {"remote_images_per_second", remote},
                    {"local_images_per_second", inproc},
                    {"remote_median", a},
                    {"local_median", b},
                    {"ratio", a / b}});
  }
  const long node_peak = bench::status_kb("VmHWM:", std::to_string(node));
  registry.stop("bench over");
  kill(node, SIGTERM);
  int status = 0;
  waitpid(node, &status, 0);
  io.stop();
  io_thread.join();
  std::error_code ec;
  fs::remove_all(dir, ec);
  fmt::print(
      "node peak RSS while serving: {:.1f} MB; {} inputs per measurement, {} "
      "torch threads each side, medians of {}\n",
      node_peak / 1024.0, args.inputs, args.threads, args.repeat);
  nlohmann::json out{{"benchmark", "node"},           {"inputs", args.inputs},
                     {"threads", args.threads},       {"repeat", args.repeat},
                     {"node_peak_rss_kb", node_peak}, {"rows", rows}};
  chorus::write_file_atomic(args.json, out.dump(2) + "\n");
  fmt::print("wrote {}\n", args.json);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  chorus::tune_allocator();
  Args args;
  std::uint16_t port = 0;
  std::string pki;
  bool serving = false;
  for (int i = 1; i < argc; ++i) {
    auto next = [&] {
      return i + 1 < argc ? std::string(argv[++i]) : std::string();
    };
    const std::string a = argv[i];
    if (a == "--batches") {
      args.batches.clear();
      std::stringstream list(next());
      for (std::string item; std::getline(list, item, ',');)
        args.batches.push_back(std::stoll(item));
    } else if (a == "--inputs") {
      args.inputs = std::stoll(next());
    } else if (a == "--repeat") {
      args.repeat = std::stoi(next());
    } else if (a == "--threads") {
      args.threads = std::stoi(next());
    } else if (a == "--json") {
      args.json = next();
    } else if (a == "--serve") {  // Internal: the node's process.
      serving = true;
      port = static_cast<std::uint16_t>(std::stoi(next()));
    } else if (a == "--pki") {
      pki = next();
    } else {
      std::fprintf(stderr,
                   "usage: bench_node [--batches 64,256,1024] [--inputs N] "
                   "[--repeat N] [--threads N] [--json FILE]\n");
      return 2;
    }
  }
  chorus::log::Options quiet;
  quiet.level = spdlog::level::err;
  chorus::log::init(quiet);
  try {
    if (serving) return serve(port, pki, args.threads);
    for (auto b : args.batches) {
      CHORUS_CHECK(b > 0 && b <= kMaxBatch, "--batches: {} is not in 1..{}", b,
                   kMaxBatch);
    }
    CHORUS_CHECK(args.inputs > 0 && args.repeat > 0 && args.threads > 0,
                 "--inputs, --repeat and --threads must be positive");
    return run(args);
  } catch (const chorus::Error& e) {
    std::fprintf(stderr, "bench_node: %s\n", chorus::describe(e).c_str());
    return 1;
  }
}
