// Fusion rounds end to end over real loopback mutual TLS: a NodeRegistry and
// a Coordinator against in-process nodes (NodeService + NodeSession) serving
// small synthetic experts.
#include "chorus/coordinator/coordinator.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "../fusion/synthetic.hpp"
#include "chorus/coordinator/registry.hpp"
#include "chorus/coordinator/run.hpp"
#include "chorus/coordinator/status.hpp"
#include "chorus/core/config.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/algorithms.hpp"
#include "chorus/fusion/ensemble.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/local_data.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/digest.hpp"
#include "chorus/protocol/tensor_codec.hpp"
#include "support/corrupt.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"
#include "support/wire.hpp"

namespace co = chorus::coordinator;
namespace nd = chorus::node;
namespace fu = chorus::fusion;
namespace pr = chorus::protocol;
namespace v1 = chorus::v1;
using chorus::Code;
using chorus::testing::code_of;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> kSpace = {"c0", "c1", "c2", "c3"};
constexpr std::int64_t kDim = 8;

chorus::TaskSpec blob_task() {
  return chorus::TaskSpec{.name = "blobs",
                          .labels = chorus::LabelSpace(kSpace),
                          .input_shape = {kDim}};
}

struct World {
  chorus::testing::Blobs train = chorus::testing::make_blobs(1200, 4, kDim, 11);
  chorus::testing::Blobs test =
      chorus::testing::resample_blobs(400, 4, kDim, 11, 12);
  pr::KeyPair ca = pr::make_ca("test-ca");
  pr::KeyPair coordinator = pr::issue_certificate(
      ca, "coordinator", pr::CertRole::kCoordinator, {"127.0.0.1"});
  std::map<std::string, pr::KeyPair> nodes;
  std::map<std::string, std::shared_ptr<fu::ClassifierImpl>> models;
  std::map<std::string, std::vector<std::int64_t>> tasks = {
      {"alpha", {0, 1}}, {"beta", {1, 2}}, {"gamma", {2, 3, 0}}};

  pr::KeyPair operator_keys =
      pr::issue_certificate(ca, "ops", pr::CertRole::kNode, {});

  World() {
    std::uint64_t seed = 1;
    for (const auto& [name, task] : tasks) {
      nodes.emplace(name,
                    pr::issue_certificate(ca, name, pr::CertRole::kNode, {}));
      models[name] = chorus::testing::train_expert(train, task, seed++);
    }
  }
  pr::TlsMaterial material(const pr::KeyPair& leaf) const {
    return {ca.cert_pem, leaf.cert_pem, leaf.key_pem};
  }
};

World& world() {
  static World w;
  return w;
}

// The coordinator side: a registry on its own io thread.
struct CoordinatorSide {
  asio::io_context io;
  std::unique_ptr<co::NodeRegistry> registry;
  std::thread thread;

  explicit CoordinatorSide(std::vector<std::string> roster,
                           std::vector<std::string> operators = {},
                           std::size_t max_operator_sessions = 16) {
    co::RegistryOptions o;
    o.max_operator_sessions = max_operator_sessions;
    o.port = 0;
    o.tls = world().material(world().coordinator);
    o.task = blob_task();
    o.operators = std::move(operators);
    registry = std::make_unique<co::NodeRegistry>(
        io, co::Roster(std::move(roster)), o);
    registry->start();
    thread = std::thread([this] { io.run(); });
  }
  ~CoordinatorSide() {
    registry->stop("test over");
    std::this_thread::sleep_for(100ms);
    io.stop();
    thread.join();
  }
};

// In-process nodes on one io thread.
struct Nodes {
  asio::io_context io;
  asio::thread_pool pool{1};
  std::map<std::string, std::unique_ptr<nd::NodeService>> services;
  std::vector<std::unique_ptr<nd::NodeSession>> sessions;
  std::thread thread;

  Nodes(std::uint16_t port, const std::filesystem::path& dir,
        std::map<std::string, nd::QueryPolicy> policies = {},
        std::map<std::string, std::vector<std::string>> labels = {},
        std::int64_t shots_per_class = 0,
        std::set<std::string> share_weights = {},
        std::set<std::string> absent = {}) {
    for (const auto& [name, task] : world().tasks) {
      if (absent.count(name)) continue;
      nd::ExpertOptions eo;
      eo.input_shape = {kDim};
      for (auto c : task)
        eo.labels.push_back(kSpace[static_cast<std::size_t>(c)]);
      if (labels.count(name)) eo.labels = labels[name];
      if (share_weights.count(name)) {
        // The operator lets dro read the expert's weights (train_expert's
        // architecture).
        eo.share_weights = true;
        eo.spec =
            fmt::format("mlp in={} classes={} hidden=32", kDim, task.size());
      }
      nd::NodeServiceOptions so;
      so.state_dir = dir / name;
      if (policies.count(name)) so.policy = policies[name];
      if (shots_per_class > 0) {
        // Private labelled shots of the node's own classes, for tae.
        std::vector<torch::Tensor> xs, ys;
        for (std::size_t i = 0; i < task.size(); ++i) {
          auto rows = world().train.y.eq(task[i]).nonzero().flatten().slice(
              0, 0, shots_per_class);
          xs.push_back(world().train.x.index_select(0, rows));
          ys.push_back(torch::full({rows.numel()}, static_cast<std::int64_t>(i),
                                   torch::kLong));
        }
        so.shots = std::make_shared<nd::LabelledShots>(
            nd::LabelledShots{torch::cat(xs), torch::cat(ys)});
      }
      services[name] = std::make_unique<nd::NodeService>(
          nd::make_builtin_expert(world().models[name], eo), so);
      nd::SessionOptions s;
      s.host = "127.0.0.1";
      s.port = port;
      s.tls = world().material(world().nodes.at(name));
      s.backoff.initial = 50ms;
      s.backoff.max = 500ms;
      sessions.push_back(
          std::make_unique<nd::NodeSession>(io, pool, *services[name], s));
      sessions.back()->start();
    }
    thread = std::thread([this] { io.run(); });
  }
  ~Nodes() {
    for (auto& s : sessions) s->stop();
    std::this_thread::sleep_for(100ms);
    io.stop();
    thread.join();
    pool.join();
  }
};

co::PoolData pool_data() {
  const auto& w = world();
  return co::PoolData{.inputs = w.train.x.slice(0, 0, 600),
                      .fusion_index = torch::arange(100, torch::kLong),
                      .fusion_labels = w.train.y.slice(0, 0, 100)};
}

co::CoordinatorOptions options(const std::filesystem::path& run_dir) {
  co::CoordinatorOptions o;
  o.task = blob_task();
  o.algorithm = "foe-distill";
  o.algorithm_options = fu::AlgorithmOptions().seed(1);
  o.algorithm_options.foe(
      fu::FoeOptions().hidden({32}).epochs(40).batch_size(32));
  o.algorithm_options.distill().arch("mlp").epochs(8);
  o.min_nodes = 3;
  o.quorum_timeout = 15s;
  o.settle = 0ms;
  o.request_deadline = 10s;
  o.query_batch = 128;
  o.run_dir = run_dir;
  return o;
}

nlohmann::json read_json(const std::filesystem::path& p) {
  return nlohmann::json::parse(chorus::read_file(p));
}

}  // namespace

TEST_CASE(
    "coordinator: with one byte of requests in flight across the nodes, a "
    "round still asks every node for every input") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  Nodes nodes(side.registry->port(), dir / "nodes");
  auto o = options(dir / "run");
  o.max_inflight_bytes = 1;  // one request at a time, whoever's it is
  o.query_batch = 64;
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].failed.empty());
  CHECK(reports[0].inputs_queried == 3 * 600);
  for (const auto& [name, service] : nodes.services) {
    CHECK(service->inputs_answered() == 600);
    CHECK(reports[0].per_node.at(name).requests == 10);  // ceil(600 / 64)
  }
}

TEST_CASE(
    "coordinator: with robust fusion a node answering confidently wrong is "
    "left out with the reason and never asked when serving") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  // beta announces its two classes the wrong way round: every answer is a
  // valid distribution on the wrong class.
  Nodes nodes(side.registry->port(), dir / "nodes", {},
              {{"beta", {"c2", "c1"}}});
  auto o = options(dir / "run");
  o.algorithm = "foe";
  o.algorithm_options.robust(true);
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 1);
  REQUIRE(reports[0].failed.count("beta"));
  CHECK_MESSAGE(reports[0].failed.at("beta").find(
                    "answers not trusted: its answers agree with V's labels") !=
                    std::string::npos,
                reports[0].failed.at("beta"));
  CHECK(reports[0].failed.size() == 1);
  CHECK(reports[0].experts == std::vector<std::string>{"alpha", "gamma"});
  CHECK(co::describe_left_out(reports[0]).find("1 left out (beta:") == 0);
  // Serving: alpha and gamma are asked, beta is not.
  auto served = coordinator.predict(world().test.x);
  CHECK(fu::accuracy(served.probabilities, world().test.y) > 0.7);
  CHECK(nodes.services.at("beta")->inputs_answered() == 600);
  CHECK(nodes.services.at("alpha")->inputs_answered() ==
        600 + world().test.x.size(0));
  CHECK(served.expert_queries == 2 * world().test.x.size(0));
  // No node priced: each answer costs 1.
  CHECK(served.expert_cost ==
        doctest::Approx(2.0 * static_cast<double>(world().test.x.size(0))));
}

TEST_CASE(
    "coordinator: a round queries every node, fuses, checkpoints and "
    "broadcasts the fused model") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  Nodes nodes(side.registry->port(), dir / "nodes");
  co::Coordinator coordinator(*side.registry, pool_data(),
                              options(dir / "run"));
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 1);
  const auto& r = reports[0];
  CHECK(r.experts == std::vector<std::string>{"alpha", "beta", "gamma"});
  CHECK(r.failed.empty());
  CHECK(r.inputs_queried == 3 * 600);
  CHECK(r.pool_size == 600);
  CHECK(r.per_node.at("beta").inputs == 600);
  for (const auto& [name, service] : nodes.services) {
    CHECK(service->inputs_answered() == 600);
  }

  // The fused student works without experts, and beats every single expert.
  auto& fuser = coordinator.fuser();
  CHECK_FALSE(fuser.needs_experts());
  auto probs = fuser.predict(coordinator.oracle(), world().test.x);
  const double fused = fu::accuracy(probs, world().test.y);
  auto answers = coordinator.oracle().query_all(world().test.x);
  for (std::size_t k = 0; k < answers.size(); ++k) {
    auto lifted = fu::lift(answers[k], coordinator.experts()[k].labels, 4);
    CHECK(fused > fu::accuracy(lifted, world().test.y) + 0.1);
  }
  CHECK(fused > 0.85);

  // Broadcast: every node stored exactly the file the coordinator wrote.
  const auto model_file = dir / "run" / "fused-round-1.pt";
  REQUIRE(std::filesystem::exists(model_file));
  CHECK(r.pushed_to.size() == 3);
  const auto digest = pr::to_hex(pr::sha256(chorus::read_file(model_file)));
  for (const auto& [name, service] : nodes.services) {
    auto stored = service->stored_model();
    REQUIRE(stored.has_value());
    CHECK(stored->round == 1);
    CHECK(stored->algorithm == "foe-distill");
    CHECK(stored->sha256_hex == digest);
    auto reloaded = fu::load_fused_model(stored->file);
    CHECK(reloaded.spec.num_classes == 4);
  }
  auto line = read_json(dir / "run" / "checkpoints" / "round-1.json");
  CHECK(line["inputs_queried"] == 1800);
  CHECK(std::filesystem::exists(dir / "run" / "metrics.jsonl"));
  CHECK(std::filesystem::exists(dir / "run" / "checkpoints" / "answers" /
                                "gamma.slice0.pt"));
}

TEST_CASE(
    "coordinator: rounds query new slices only, and --resume repeats no "
    "answered query") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  Nodes nodes(side.registry->port(), dir / "nodes");
  auto o = options(dir / "run");
  o.rounds = 3;
  o.algorithm = "foe";
  {
    co::Coordinator coordinator(*side.registry, pool_data(), o);
    auto reports = coordinator.run();
    REQUIRE(reports.size() == 3);
    for (const auto& r : reports) CHECK(r.inputs_queried == 3 * 200);
    CHECK(reports[2].pool_size == 600);
  }
  for (const auto& [name, service] : nodes.services) {
    CHECK(service->inputs_answered() == 600);
  }
  // A crash after round 2: its manifest is gone, its answers are on disk.
  std::filesystem::remove(dir / "run" / "checkpoints" / "round-3.json");
  o.resume = true;
  co::Coordinator again(*side.registry, pool_data(), o);
  auto reports = again.run();
  REQUIRE(reports.size() == 3);
  CHECK(reports[0].resumed);
  CHECK(reports[1].resumed);
  CHECK_FALSE(reports[2].resumed);
  CHECK(reports[2].inputs_queried == 0);
  for (const auto& [name, service] : nodes.services) {
    CHECK(service->inputs_answered() == 600);
  }
  CHECK(fu::accuracy(again.fuser().predict(again.oracle(), world().test.x),
                     world().test.y) > 0.85);

  // Bytes of alpha's slice 1 flipped on disk: the file fails its checksum,
  // is refused, and only what it held is asked again.
  const auto slice1 =
      dir / "run" / "checkpoints" / "answers" / "alpha.slice1.pt";
  {
    std::vector<torch::Tensor> held;
    std::istringstream in(chorus::read_file(slice1));
    torch::load(held, in);
    REQUIRE(chorus::testing::flip_payload(slice1, held.at(0)));
  }
  std::filesystem::remove(dir / "run" / "checkpoints" / "round-3.json");
  std::map<std::string, std::int64_t> before;
  for (const auto& [name, service] : nodes.services)
    before[name] = service->inputs_answered();
  co::Coordinator third(*side.registry, pool_data(), o);
  auto after = third.run();
  REQUIRE(after.size() == 3);
  CHECK(after[2].inputs_queried == 200);
  CHECK(nodes.services.at("alpha")->inputs_answered() - before["alpha"] == 200);
  CHECK(nodes.services.at("beta")->inputs_answered() == before["beta"]);
  CHECK(nodes.services.at("gamma")->inputs_answered() == before["gamma"]);
  CHECK(fu::accuracy(third.fuser().predict(third.oracle(), world().test.x),
                     world().test.y) > 0.85);
}

TEST_CASE(
    "coordinator: a node that refuses is left out and the round proceeds "
    "with the quorum") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  nd::QueryPolicy stingy;
  stingy.budget.total_budget = 100;  // Less than the pool.
  Nodes nodes(side.registry->port(), dir / "nodes", {{"beta", stingy}});
  auto o = options(dir / "run");
  o.min_nodes = 2;
  o.settle = 2s;
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].experts == std::vector<std::string>{"alpha", "gamma"});
  REQUIRE(reports[0].failed.count("beta"));
  CHECK(reports[0].failed.at("beta").find("RESOURCE_EXHAUSTED") !=
        std::string::npos);
  CHECK(coordinator.experts().size() == 2);
}

TEST_CASE(
    "coordinator: no quorum names the missing nodes, and labels outside the "
    "label space are refused at admission") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma", "delta"});
  Nodes nodes(side.registry->port(), dir / "nodes", {},
              {{"gamma", {"c2", "c3", "c9"}}});
  std::string msg;
  CHECK(code_of([&] { side.registry->wait_for_quorum(3, 2s); }, &msg) ==
        Code::kDeadlineExceeded);
  CHECK(msg.find("missing: gamma, delta") != std::string::npos);
  // The timeout repeats why gamma was refused at its Hello.
  CHECK(msg.find("'gamma' was refused: node 'gamma' has label 'c9', which is "
                 "not in the "
                 "label space of task 'blobs' (c0, c1, c2, c3)") !=
        std::string::npos);
  CHECK(side.registry->refusals().count("gamma") == 1);
  CHECK(side.registry->connected().size() == 2);
  CHECK_FALSE(side.registry->is_connected("gamma"));
}

TEST_CASE(
    "coordinator: min_nodes 0 is the roster as it stands, so a node removed "
    "by a reload no longer holds the rounds") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma", "delta"});
  Nodes nodes(side.registry->port(), dir / "nodes");  // delta never comes
  std::string msg;
  CHECK(code_of([&] { side.registry->wait_for_quorum(0, 2s); }, &msg) ==
        Code::kDeadlineExceeded);
  CHECK(msg.find("3 of the 4 required nodes are connected; missing: delta") !=
        std::string::npos);
  // The operator takes delta off the roster (what SIGHUP does).
  auto summary =
      side.registry->reload(co::Roster({"alpha", "beta", "gamma"}), {},
                            world().material(world().coordinator));
  CHECK(summary.nodes_removed == std::vector<std::string>{"delta"});
  auto o = options(dir / "run");
  o.min_nodes = 0;
  o.quorum_timeout = 10s;
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  const auto t0 = std::chrono::steady_clock::now();
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].experts.size() == 3);
  CHECK(reports[0].phases.quorum < 5.0);
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
}

namespace {

// One connection to the coordinator, dialled with pr::connect, on its own
// io thread (an operator's client, or a hand-written node).
struct LoopClient {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{
      io.get_executor()};
  std::thread thread{[this] { io.run(); }};
  std::shared_ptr<pr::Connection> connection;

  LoopClient(std::uint16_t port, const pr::KeyPair& keys,
             const pr::Hello& hello, pr::Connection::RequestHandler serve)
      : LoopClient(port, world().material(keys), hello, std::move(serve)) {}
  LoopClient(std::uint16_t port, const pr::TlsMaterial& tls,
             const pr::Hello& hello, pr::Connection::RequestHandler serve) {
    try {
      connection = pr::connect(io, "127.0.0.1", port, tls, pr::ChannelOptions{},
                               hello, std::move(serve));
    } catch (...) {
      stop();
      throw;
    }
  }
  ~LoopClient() { stop(); }
  void stop() {
    if (!thread.joinable()) return;
    if (connection) connection->close("done");
    std::this_thread::sleep_for(50ms);
    guard.reset();
    io.stop();
    thread.join();
  }
};

pr::Hello operator_hello(bool says_operator) {
  pr::Hello hello;
  if (says_operator) hello.capabilities.push_back("operator");
  return hello;
}

asio::awaitable<v1::Envelope> serve_nothing(v1::Envelope) {
  co_return pr::make_status(Code::kUnimplemented, "no");
}

// An operator's one-shot client.
struct Operator : LoopClient {
  Operator(std::uint16_t port, const pr::KeyPair& keys,
           bool says_operator = true)
      : LoopClient(port, keys, operator_hello(says_operator), serve_nothing) {}
  v1::Envelope ask(const torch::Tensor& x) {
    v1::Envelope request;
    chorus::testing::encode_tensor(
        x, request.mutable_predict_request()->mutable_inputs());
    return connection->request_async(request, 10s).get();
  }
};

}  // namespace

TEST_CASE(
    "coordinator: status says refused, with why, for a rostered node not "
    "connected that was refused, and connected and left-out nodes keep "
    "theirs") {
  co::StatusBoard board("c", "foe", 1);
  board.phase(1, "query");
  board.asking("gamma", 10);
  board.left_out("gamma", "too slow");
  const auto now = std::chrono::steady_clock::now();
  const auto s =
      board.snapshot({"alpha", "beta", "gamma", "delta"}, {{"alpha", now}},
                     {{"alpha", "an old refusal"},
                      {"beta", "its certificate (serial AB) is revoked"},
                      {"gamma", "node 'gamma' has label 'c9'"}});
  REQUIRE(s.nodes.size() == 4);
  CHECK(s.nodes[0].state == "connected");  // Heard now: the refusal is past.
  CHECK(s.nodes[0].reason.empty());
  CHECK(s.nodes[1].state == "refused");
  CHECK(s.nodes[1].reason == "its certificate (serial AB) is revoked");
  CHECK(s.nodes[2].state == "refused");  // Not connected: refused since.
  CHECK(s.nodes[2].reason == "node 'gamma' has label 'c9'");
  CHECK(s.nodes[3].state == "disconnected");
  CHECK(s.nodes[3].reason.empty());
  // Without refusals, the left-out node says so.
  CHECK(board.snapshot({"gamma"}, {}).nodes[0].state == "left_out");
}

TEST_CASE(
    "coordinator: a reload names roster members whose certificate the CRL "
    "revokes, and a quorum that waits for one says it cannot rejoin") {
  chorus::testing::TempDir pki;
  pr::init_deployment(pki.path(), {"127.0.0.1"}, {"alpha", "beta"});
  auto material = [&](const std::string& name, bool crl) {
    return pr::TlsMaterial::load(
        pki / "ca.crt", pki / (name + ".crt"), pki / (name + ".key"),
        crl ? pki / "crl.pem" : std::filesystem::path());
  };
  asio::io_context io;
  co::RegistryOptions o;
  o.port = 0;
  o.tls = material("coordinator", true);
  co::NodeRegistry registry(io, co::Roster({"alpha", "beta"}), o);
  registry.start();
  std::thread thread([&] { io.run(); });
  {
    LoopClient alpha(registry.port(), material("alpha", false), pr::Hello{},
                     serve_nothing);
    for (int i = 0; i < 200 && !registry.is_connected("alpha"); ++i)
      std::this_thread::sleep_for(10ms);
    REQUIRE(registry.is_connected("alpha"));
    const auto serials = pr::revoke_certificate(pki.path(), "alpha");
    REQUIRE(serials.size() == 1);
    auto summary = registry.reload(co::Roster({"alpha", "beta"}), {},
                                   material("coordinator", true));
    CHECK(summary.revoked_members ==
          std::vector<std::string>{"alpha (serial " + serials[0] + ")"});
    CHECK(summary.dropped.size() == 1);
    // Gone, alpha is still named at the next reload: it is on the roster.
    for (int i = 0; i < 200 && registry.is_connected("alpha"); ++i)
      std::this_thread::sleep_for(10ms);
    CHECK_FALSE(registry.is_connected("alpha"));
    summary = registry.reload(co::Roster({"alpha", "beta"}), {},
                              material("coordinator", true));
    CHECK(summary.revoked_members.size() == 1);
    std::string msg;
    CHECK(code_of([&] { registry.wait_for_quorum(0, 300ms); }, &msg) ==
          Code::kDeadlineExceeded);
    CHECK(msg.find("missing: alpha, beta") != std::string::npos);
    CHECK(msg.find("'alpha' cannot rejoin: its certificate (serial " +
                   serials[0] + ") is revoked") != std::string::npos);
    CHECK(msg.find("'beta' cannot rejoin") == std::string::npos);
    // Off the roster, alpha is no longer named.
    summary = registry.reload(co::Roster({"beta"}), {},
                              material("coordinator", true));
    CHECK(summary.revoked_members.empty());
  }
  registry.stop("test over");
  std::this_thread::sleep_for(100ms);
  io.stop();
  thread.join();
}

TEST_CASE(
    "coordinator: operator sessions are capped, and a closed one frees its "
    "place") {
  CoordinatorSide side({"alpha"}, {"ops"}, /*max_operator_sessions=*/2);
  auto first =
      std::make_unique<Operator>(side.registry->port(), world().operator_keys);
  Operator second(side.registry->port(), world().operator_keys);
  std::string msg;
  CHECK(
      code_of(
          [&] { Operator third(side.registry->port(), world().operator_keys); },
          &msg) == Code::kResourceExhausted);
  CHECK(msg.find("2 operator sessions are open") != std::string::npos);
  CHECK(msg.find("coordinator.max_operator_sessions") != std::string::npos);
  first.reset();
  bool admitted = false;
  for (int i = 0; i < 100 && !admitted; ++i) {
    admitted = code_of([&] {
                 Operator again(side.registry->port(), world().operator_keys);
               }) == Code::kOk;
    if (!admitted) std::this_thread::sleep_for(20ms);
  }
  CHECK(admitted);
}

TEST_CASE(
    "coordinator: after its rounds it serves operators fused predictions, "
    "asking the nodes") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"}, {"ops"});
  Nodes nodes(side.registry->port(), dir / "nodes");
  auto o = options(dir / "run");
  o.algorithm = "foe";
  // beta priced at 2.5 ([fusion.frugal] costs): the answer says what its
  // expert answers cost.
  o.algorithm_options.frugal().costs_by_name({{"beta", 2.5}});
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  coordinator.run();

  Operator ops(side.registry->port(), world().operator_keys);
  auto x = world().test.x.slice(0, 0, 50);
  // Not serving yet: UNAVAILABLE, and the connection stays.
  std::string msg;
  CHECK(code_of([&] { ops.ask(x); }, &msg) == Code::kUnavailable);
  CHECK(msg.find("not serving") != std::string::npos);
  CHECK(side.registry->operators_connected() ==
        std::vector<std::string>{"ops"});
  // The operator is not a node.
  CHECK(side.registry->connected().size() == 3);

  side.registry->serve_operators(
      [&](const std::string&, const pr::PredictCall& call) {
        return coordinator.answer(call);
      });
  std::map<std::string, std::int64_t> before;
  for (const auto& [name, service] : nodes.services)
    before[name] = service->inputs_answered();
  auto reply = ops.ask(x);
  REQUIRE(reply.has_predict_response());
  const auto& r = reply.predict_response();
  CHECK(r.algorithm() == "foe");
  CHECK(r.fused_round() == 1);
  CHECK(std::vector<std::string>(r.labels().begin(), r.labels().end()) ==
        kSpace);
  // foe asks every fused expert about every input.
  CHECK(r.expert_queries() == 3 * 50);
  CHECK(r.expert_cost() == doctest::Approx(50 * (1 + 2.5 + 1)));
  for (const auto& [name, service] : nodes.services) {
    CHECK(service->inputs_answered() == before[name] + 50);
  }
  auto probs = chorus::testing::decode_tensor(r.outputs());
  REQUIRE(probs.sizes() == torch::IntArrayRef({50, 4}));
  CHECK(torch::allclose(
      probs, coordinator.fuser().predict(coordinator.oracle(), x), 1e-5, 1e-6));
  CHECK(fu::accuracy(probs, world().test.y.slice(0, 0, 50)) > 0.8);

  // Bad inputs: a clear error, and the operator stays connected.
  CHECK(code_of(
            [&] {
              ops.ask(torch::zeros({5, 7}));
            },
            &msg) == Code::kInvalidArgument);
  CHECK(msg.find("inputs of shape [5, 7] do not fit the task 'blobs' (one "
                 "input is [8])") != std::string::npos);
  CHECK(code_of(
            [&] {
              ops.ask(torch::full({2, kDim}, std::nanf("")));
            },
            &msg) == Code::kInvalidArgument);
  CHECK(msg.find("NaN") != std::string::npos);
  CHECK(ops.ask(x).has_predict_response());

  // A node's certificate cannot act as an operator, nor an operator's as a
  // node.
  CHECK(code_of(
            [&] {
              Operator impostor(side.registry->port(),
                                world().nodes.at("alpha"));
            },
            &msg) == Code::kPermissionDenied);
  CHECK(msg.find("'alpha' is not an operator") != std::string::npos);
  CHECK(code_of(
            [&] {
              Operator node_like(side.registry->port(), world().operator_keys,
                                 false);
            },
            &msg) == Code::kPermissionDenied);
  CHECK(msg.find("'ops' is an operator of this coordinator, not a node") !=
        std::string::npos);

  // A node away: the answer is fused without it, and says so.
  nodes.sessions[2]->stop();  // gamma (the roster's order)
  for (int i = 0; i < 300 && side.registry->is_connected("gamma"); ++i) {
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE_FALSE(side.registry->is_connected("gamma"));
  const auto gamma_before = nodes.services.at("gamma")->inputs_answered();
  auto degraded = ops.ask(x);
  REQUIRE(degraded.has_predict_response());
  const auto& d = degraded.predict_response();
  CHECK(std::vector<std::string>(d.experts_away().begin(),
                                 d.experts_away().end()) ==
        std::vector<std::string>{"gamma"});
  CHECK(d.expert_queries() == 2 * 50);
  CHECK(nodes.services.at("gamma")->inputs_answered() == gamma_before);
  auto dp = chorus::testing::decode_tensor(d.outputs());
  REQUIRE(dp.sizes() == torch::IntArrayRef({50, 4}));
  CHECK(torch::allclose(dp.sum(1), torch::ones({50}), 1e-4, 1e-4));
  // Worse than with every expert, better than chance.
  CHECK(fu::accuracy(dp, world().test.y.slice(0, 0, 50)) > 0.4);
  // Every expert away: UNAVAILABLE, naming them.
  nodes.sessions[0]->stop();
  nodes.sessions[1]->stop();
  for (int i = 0; i < 300 && !side.registry->connected().empty(); ++i) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(code_of([&] { ops.ask(x); }, &msg) == Code::kUnavailable);
  CHECK(msg.find("none of the fused model's experts is connected (alpha, "
                 "beta, gamma)") != std::string::npos);
}

TEST_CASE(
    "coordinator: answers are checkpointed request by request, and a resumed "
    "round asks only for the inputs not answered") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  auto o = options(dir / "run");
  o.algorithm = "foe";
  o.rounds = 2;  // Slices of 300 inputs.
  o.query_batch = 50;
  o.min_nodes = 2;
  o.settle = 2s;
  {
    // beta's budget ends after 5 of the 6 requests of its first slice.
    nd::QueryPolicy stingy;
    stingy.budget.total_budget = 250;
    Nodes nodes(side.registry->port(), dir / "nodes1", {{"beta", stingy}});
    co::Coordinator coordinator(*side.registry, pool_data(), o);
    auto reports = coordinator.run();
    REQUIRE(reports.size() == 2);
    CHECK(reports[0].failed.count("beta"));
    CHECK(reports[1].failed.count("beta"));
    CHECK(nodes.services.at("beta")->inputs_answered() == 250);
  }
  CHECK(std::filesystem::exists(dir / "run" / "checkpoints" / "answers" /
                                "beta.slice0.part0.pt"));
  CHECK(std::filesystem::exists(dir / "run" / "checkpoints" / "answers" /
                                "beta.slice0.part200.pt"));
  CHECK_FALSE(std::filesystem::exists(dir / "run" / "checkpoints" / "answers" /
                                      "beta.slice0.pt"));
  // Round 2 again, with beta's budget raised: beta is asked for the last
  // 50 inputs of slice 0 and for slice 1, the others for nothing.
  std::filesystem::remove(dir / "run" / "checkpoints" / "round-2.json");
  Nodes nodes(side.registry->port(), dir / "nodes2");
  o.resume = true;
  o.settle = 5s;
  co::Coordinator again(*side.registry, pool_data(), o);
  auto reports = again.run();
  REQUIRE(reports.size() == 2);
  CHECK(reports[1].failed.empty());
  CHECK(nodes.services.at("beta")->inputs_answered() == 50 + 300);
  CHECK(nodes.services.at("alpha")->inputs_answered() == 0);
  CHECK(nodes.services.at("gamma")->inputs_answered() == 0);
  CHECK(std::filesystem::exists(dir / "run" / "checkpoints" / "answers" /
                                "beta.slice0.pt"));
  CHECK_FALSE(std::filesystem::exists(dir / "run" / "checkpoints" / "answers" /
                                      "beta.slice0.part0.pt"));
}

TEST_CASE(
    "coordinator: tae keeps the nodes' embeddings, one per task, and the next "
    "round's model is pushed with its prior refit on them") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  Nodes nodes(side.registry->port(), dir / "nodes", {}, {},
              /*shots_per_class=*/5);
  auto o = options(dir / "run");
  o.algorithm = "tae";
  o.rounds = 2;
  const auto tae_options =
      fu::TaeOptions()
          .network(fu::TaeNetworkOptions().prototypes(20).hidden(32))
          .training(fu::TaeTrainingOptions().epochs(3))
          .adaptation(fu::TaeAdaptationOptions().samples(3).steps(20));
  o.algorithm_options.tae(tae_options);
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 2);
  for (const auto& r : reports) {
    CHECK(r.adapted.size() == 3);
    CHECK(r.pushed_to.size() == 3);
  }

  // One embedding per task, the newest (round 2), saved atomically.
  auto kept = read_json(dir / "run" / "checkpoints" / "embeddings.json");
  CHECK(kept.size() == 3);
  CHECK(kept.contains("0,1"));
  CHECK(kept.contains("0,2,3"));  // gamma's classes, sorted
  CHECK(kept["0,1"]["node"] == "alpha");
  CHECK(kept["0,1"]["round"] == 2);
  CHECK(kept["0,1"]["mean"].size() == 2);

  // Round 2's model as the nodes got it: p_γ was refit on round 1's
  // embeddings before the push. The same model trained without the refit
  // (same data, same seed) fits those embeddings worse.
  auto round1 = read_json(dir / "run" / "embeddings-round-1.json");
  auto stored = nodes.services.at("alpha")->stored_model();
  REQUIRE(stored.has_value());
  CHECK(stored->round == 2);
  auto pushed = fu::TaeModel::load(stored->file);
  auto fresh = fu::make_fuser("tae", o.algorithm_options);
  fresh->fit(coordinator.data());
  auto& unrefit = *fu::tae_model(*fresh);
  auto misfit = [&](fu::TaeModel& model) {
    double total = 0;
    for (const auto& [node, task] : world().tasks) {
      auto p = model.prior(fu::task_descriptor(task, 4));
      auto mean = torch::tensor(round1[node]["mean"].get<std::vector<double>>(),
                                torch::kFloat);
      total += (p.mean - mean).pow(2).sum().item<double>();
    }
    return total;
  };
  const double refit = misfit(pushed), not_refit = misfit(unrefit);
  INFO("squared distance of the priors to round 1's embeddings: refit "
       << refit << ", not refit " << not_refit);
  CHECK(refit < not_refit);

  // A resumed coordinator reads the kept embeddings back and pushes a
  // model refit on them.
  {
    auto again = o;
    again.resume = true;
    co::Coordinator resumed(*side.registry, pool_data(), again);
    auto more = resumed.run();
    REQUIRE(more.size() == 2);
    CHECK(more.back().pushed_to.size() == 3);
  }
  auto reloaded = read_json(dir / "run" / "checkpoints" / "embeddings.json");
  CHECK(reloaded.size() == 3);
}

TEST_CASE(
    "coordinator: dro fuses imitators and the weights a node chose to share, "
    "pushes the initialisation and every node adapts it") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  // gamma (3 classes, the widest task) and alpha share their weights;
  // alpha's 2-class head is not the federation's 3 outputs, so alpha is
  // imitated all the same, as beta is.
  Nodes nodes(side.registry->port(), dir / "nodes", {}, {},
              /*shots_per_class=*/5, {"gamma", "alpha"});
  auto o = options(dir / "run");
  o.algorithm = "dro";
  o.algorithm_options.dro(
      fu::DroOptions().embedding_dim(8).meta_steps(100).imitator(
          fu::DroOptions().imitator().arch("mlp").hidden({32}).epochs(4)));
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 1);
  const auto& r = reports.front();
  CHECK(r.pushed_to.size() == 3);
  REQUIRE(r.adapted.size() == 3);
  for (const auto& [node, shot_accuracy] : r.adapted) {
    CAPTURE(node);
    CHECK(shot_accuracy >= 0.0);
    CHECK(shot_accuracy <= 1.0);
  }
  CHECK(read_json(dir / "run" / "adapted-round-1.json").size() == 3);

  auto init = fu::load_fused_model(dir / "run" / "fused.pt");
  CHECK(init.algorithm == "dro");
  CHECK(init.spec.num_classes == 3);
  CHECK(init.attributes.at("source") == "imitators+weights");
  CHECK(init.attributes.at("shared_weights") == "1");  // gamma's only
  CHECK(init.attributes.at("models") == "3");
  CHECK(chorus::testing::contains(init.attributes.at("labels"), "c3"));

  // Each node keeps its adapted model, over its own classes.
  auto adapted = fu::load_fused_model(dir / "nodes" / "gamma" / "adapted.pt");
  CHECK(adapted.algorithm == "dro-adapted");
  CHECK(adapted.spec.num_classes == 3);
  CHECK(fu::task_outputs(adapted).names ==
        std::vector<std::string>{"c2", "c3", "c0"});
}

namespace {

// A rostered node that speaks the protocol but answers every prediction with
// one poisoned value (what a hostile or broken node could send).
pr::Hello poison_hello(const std::vector<std::string>& labels) {
  pr::Hello hello;
  hello.expert.input_shape = {kDim};
  hello.expert.labels = labels;
  hello.policy.max_batch = 256;
  hello.capabilities = {"predict"};
  return hello;
}

// Answers every row uniformly over `width` labels, but the first value of a
// request is -32,427.
pr::Connection::RequestHandler poisoned_answers(std::int64_t width) {
  return [width](v1::Envelope request) -> asio::awaitable<v1::Envelope> {
    const auto rows = request.predict_request().inputs().shape().empty()
                          ? 0
                          : request.predict_request().inputs().shape(0);
    auto answers = torch::full({rows, width}, 1.0f / width);
    if (rows > 0) answers[0][0] = -32427.0f;
    v1::Envelope reply;
    chorus::testing::encode_tensor(
        answers, reply.mutable_predict_response()->mutable_outputs());
    co_return reply;
  };
}

struct PoisonNode : LoopClient {
  PoisonNode(std::uint16_t port, const std::string& name,
             const std::vector<std::string>& labels)
      : LoopClient(port, world().nodes.at(name), poison_hello(labels),
                   poisoned_answers(static_cast<std::int64_t>(labels.size()))) {
  }
};

}  // namespace

TEST_CASE(
    "coordinator: a node whose answers are not distributions is left out, "
    "named, and cannot poison the fused model") {
  chorus::testing::TempDir dir;
  CoordinatorSide side({"alpha", "beta", "gamma"});
  Nodes nodes(side.registry->port(), dir / "nodes", {}, {}, 0, {}, {"beta"});
  PoisonNode beta(side.registry->port(), "beta", {"c1", "c2"});
  for (int i = 0; i < 200 && side.registry->connected().size() < 3; ++i)
    std::this_thread::sleep_for(50ms);
  REQUIRE(side.registry->connected().size() == 3);
  auto o = options(dir / "run");
  o.min_nodes = 2;
  co::Coordinator coordinator(*side.registry, pool_data(), o);
  auto reports = coordinator.run();
  REQUIRE(reports.size() == 1);
  const auto& r = reports.front();
  REQUIRE(r.failed.count("beta") == 1);
  CHECK(chorus::testing::contains(r.failed.at("beta"), "-32427"));
  CHECK(chorus::testing::contains(r.failed.at("beta"),
                                  "probabilities lie in [0, 1]"));
  CHECK(r.experts == std::vector<std::string>{"alpha", "gamma"});
  // The fused model learnt from the two honest nodes only.
  CHECK(fu::accuracy(
            coordinator.fuser().predict(coordinator.oracle(), world().test.x),
            world().test.y) > 0.5);
}

// [fusion.tae]: the coordinator's config reaches tae's options.
namespace {

co::CoordinatorConfig coordinator_config(const std::string& extra) {
  auto c = chorus::Config::parse("[coordinator]\nroster = [\"a\"]\n" + extra,
                                 "coordinator.toml");
  return co::read_coordinator_config(c);
}

// Each config text is refused (INVALID_ARGUMENT) with a message holding its
// expected words.
void check_refused(
    const std::vector<std::pair<std::string, std::string>>& cases) {
  for (const auto& [text, expect] : cases) {
    CAPTURE(text);
    std::string message;
    CHECK(chorus::testing::code_of([&] { coordinator_config(text + "\n"); },
                                   &message) == Code::kInvalidArgument);
    CHECK(message.find(expect) != std::string::npos);
  }
}

}  // namespace

TEST_CASE(
    "coordinator config: [fusion.tae]'s defaults are TaeOptions's, and its "
    "keys reach the tae fuser's options") {
  const fu::TaeOptions defaults;
  auto o = co::algorithm_options(coordinator_config(""));
  CHECK(o.tae().training().epochs() == defaults.training().epochs());
  CHECK(o.tae().training().pool_centres() ==
        defaults.training().pool_centres());
  CHECK(o.tae().training().encoder_shift() ==
        defaults.training().encoder_shift());
  CHECK(o.tae().training().answer_weight() ==
        defaults.training().answer_weight());
  CHECK(o.tae().network().conv_channels() ==
        defaults.network().conv_channels());
  CHECK(o.tae().adaptation().readout() == defaults.adaptation().readout());
  CHECK(o.tae().adaptation().head_steps() ==
        defaults.adaptation().head_steps());
  CHECK(o.tae().adaptation().covariance_shrinkage() ==
        defaults.adaptation().covariance_shrinkage());

  auto k = coordinator_config(
      "[fusion.tae]\nepochs = 3\nconv_channels = 0\npool_centres = 0\n"
      "encoder_shift = 1\nanswer_weight = 10\nreadout = \"features\"\n"
      "head_steps = 7\ncovariance_shrinkage = 1\n");
  o = co::algorithm_options(k);
  CHECK(o.tae().training().epochs() == 3);
  CHECK(o.tae().network().conv_channels() == 0);
  CHECK(o.tae().training().pool_centres() == 0);
  CHECK(o.tae().training().encoder_shift() == 1);
  CHECK(o.tae().training().answer_weight() == 10.0);
  CHECK(o.tae().adaptation().readout() == fu::TaeReadout::kFeatures);
  CHECK(o.tae().adaptation().head_steps() == 7);
  CHECK(o.tae().adaptation().covariance_shrinkage() == 1.0);
  // The resolved config (--print-config, the run's config.toml) reads back
  // as the same settings.
  const auto resolved = co::to_toml(k);
  auto again =
      coordinator_config(resolved.substr(resolved.find("[fusion.tae]")));
  CHECK(again.algorithms.tae.epochs == 3);
  CHECK(again.algorithms.tae.readout == "features");
  CHECK(again.algorithms.tae.answer_weight == 10.0);
}

TEST_CASE(
    "coordinator config: [fusion.foe], [fusion.distill], [fusion.frugal] and "
    "[fusion.dro] default to the fusion options' defaults and reach them") {
  // The defaults the fusion algorithms run with when the config says
  // nothing.
  const fu::AlgorithmOptions defaults;
  auto o = co::algorithm_options(coordinator_config(""));
  for (const auto* foe : {&o.foe(), &o.frugal().fuser()}) {
    CHECK(foe->epochs() == defaults.foe().epochs());
    CHECK(foe->hidden() == defaults.foe().hidden());
    CHECK(foe->lr() == defaults.foe().lr());
    CHECK(foe->batch_size() == defaults.foe().batch_size());
    CHECK(foe->weight_decay() == defaults.foe().weight_decay());
    CHECK(foe->features() == defaults.foe().features());
    CHECK(foe->self_training_rounds() == defaults.foe().self_training_rounds());
    CHECK(foe->pseudo_label_confidence() ==
          defaults.foe().pseudo_label_confidence());
  }
  CHECK(defaults.frugal().fuser().features() == defaults.foe().features());
  CHECK(o.distill().epochs() == defaults.distill().epochs());
  CHECK(o.distill().lr() == defaults.distill().lr());
  CHECK(o.distill().batch_size() == defaults.distill().batch_size());
  CHECK(o.distill().temperature() == defaults.distill().temperature());
  CHECK(o.distill().holdout() == defaults.distill().holdout());
  CHECK(o.distill().patience() == defaults.distill().patience());
  CHECK(o.frugal().neighbours() == defaults.frugal().neighbours());
  CHECK(o.frugal().knn_k() == defaults.frugal().knn_k());
  CHECK(o.frugal().lambda() == defaults.frugal().lambda());
  CHECK(o.frugal().estimate_on_transfer() ==
        defaults.frugal().estimate_on_transfer());
  CHECK(o.frugal().costs_by_name().empty());
  CHECK(defaults.frugal().costs_by_name().empty());
  CHECK(o.dro().meta_steps() == defaults.dro().meta_steps());
  CHECK(o.dro().meta_lr() == defaults.dro().meta_lr());
  CHECK(o.dro().inner_steps() == defaults.dro().inner_steps());
  CHECK(o.dro().inner_lr() == defaults.dro().inner_lr());
  CHECK(o.dro().gammas() == defaults.dro().gammas());
  CHECK(o.dro().embedding_dim() == defaults.dro().embedding_dim());
  CHECK(o.dro().online() == defaults.dro().online());
  CHECK(o.dro().online_steps() == defaults.dro().online_steps());
  CHECK(o.dro().adapt_steps() == defaults.dro().adapt_steps());
  CHECK(o.dro().adapt_lr() == defaults.dro().adapt_lr());

  const std::string tables =
      "[fusion.foe]\nepochs = 7\nhidden = [64]\nlr = 0.01\nbatch_size = 32\n"
      "weight_decay = 0\nfeatures = \"probs\"\nself_training_rounds = 2\n"
      "pseudo_label_confidence = 0.8\n"
      "[fusion.distill]\nepochs = 3\nlr = 0.002\nbatch_size = 64\n"
      "temperature = 2\nholdout = 0.2\npatience = 1\n"
      "[fusion.frugal]\nneighbours = 5\nknn_k = 3\nlambda = 0.1\n"
      "estimate_on_transfer = false\ncosts = { a = 3 }\n"
      "[fusion.dro]\nmeta_steps = 40\nmeta_lr = 0.1\ninner_steps = 2\n"
      "inner_lr = 0.05\ngammas = [0]\nembedding_dim = 8\nonline = true\n"
      "online_steps = 3\nadapt_steps = 5\nadapt_lr = 0.01\n";
  auto k = coordinator_config(tables);
  o = co::algorithm_options(k);
  for (const auto* foe : {&o.foe(), &o.frugal().fuser()}) {
    CHECK(foe->epochs() == 7);
    CHECK(foe->hidden() == std::vector<std::int64_t>{64});
    CHECK(foe->lr() == 0.01);
    CHECK(foe->batch_size() == 32);
    CHECK(foe->weight_decay() == 0.0);
    CHECK(foe->features() == fu::FoeFeatures::kProbs);
    CHECK(foe->self_training_rounds() == 2);
    CHECK(foe->pseudo_label_confidence() == 0.8);
  }
  CHECK(o.distill().epochs() == 3);
  CHECK(o.distill().lr() == 0.002);
  CHECK(o.distill().batch_size() == 64);
  CHECK(o.distill().temperature() == 2.0);
  CHECK(o.distill().holdout() == 0.2);
  CHECK(o.distill().patience() == 1);
  CHECK(o.frugal().neighbours() == 5);
  CHECK(o.frugal().knn_k() == 3);
  CHECK(o.frugal().lambda() == 0.1);
  CHECK_FALSE(o.frugal().estimate_on_transfer());
  CHECK(o.frugal().costs_by_name() == fu::ExpertCosts{{"a", 3.0}});
  CHECK(o.dro().meta_steps() == 40);
  CHECK(o.dro().meta_lr() == 0.1);
  CHECK(o.dro().inner_steps() == 2);
  CHECK(o.dro().inner_lr() == 0.05);
  CHECK(o.dro().gammas() == std::vector<double>{0});
  CHECK(o.dro().embedding_dim() == 8);
  CHECK(o.dro().online());
  CHECK(o.dro().online_steps() == 3);
  CHECK(o.dro().adapt_steps() == 5);
  CHECK(o.dro().adapt_lr() == 0.01);
  // dro's imitators keep their own recipe: [fusion.distill] is the
  // student's.
  CHECK(o.dro().imitator().epochs() == defaults.dro().imitator().epochs());

  // The resolved config reads back as the same settings, table by table.
  const auto resolved = co::to_toml(k);
  auto again = coordinator_config(
      resolved.substr(resolved.find("[fusion.foe]"),
                      resolved.find("[data]") - resolved.find("[fusion.foe]")));
  for (const auto& table : co::settings_tables()) {
    CAPTURE(table);
    CHECK(co::settings_toml(again.algorithms, table) ==
          co::settings_toml(k.algorithms, table));
    if (table != "tae") {  // the only table the text above leaves alone
      CHECK(co::settings_toml(again.algorithms, table) !=
            co::settings_toml(co::AlgorithmSettings{}, table));
    }
  }
  // simulate prints a table on one line.
  CHECK(co::settings_line(k.algorithms, "foe") ==
        "foe: epochs 7, hidden [64], lr 0.01, batch_size 32, weight_decay 0, "
        "features probs, self_training_rounds 2, pseudo_label_confidence 0.8");
  CHECK(co::tables_of("foe-distill") ==
        std::vector<std::string>{"foe", "distill"});
  CHECK(co::tables_of("bplus").empty());
}

TEST_CASE(
    "coordinator config: [fusion.frugal.costs] names nodes by identity, "
    "dotted ones too, and reads back from the resolved config") {
  auto c = chorus::Config::parse(
      "[coordinator]\nroster = [\"a\", \"node.example.org\"]\n"
      "[fusion.frugal.costs]\n\"node.example.org\" = 2.5\na = 1\n",
      "coordinator.toml");
  const auto k = co::read_coordinator_config(c);
  const fu::ExpertCosts expected{{"a", 1.0}, {"node.example.org", 2.5}};
  CHECK(co::algorithm_options(k).frugal().costs_by_name() == expected);
  const auto toml = co::settings_toml(k.algorithms, "frugal");
  CHECK(chorus::testing::contains(
      toml, "costs = { \"a\" = 1, \"node.example.org\" = 2.5 }\n"));
  auto again = chorus::Config::parse(
      "[coordinator]\nroster = [\"a\", \"node.example.org\"]\n" + toml,
      "resolved.toml");
  CHECK(co::read_coordinator_config(again).algorithms.frugal.costs == expected);
  // `--set` and simulate's `--frugal` take the inline table.
  auto set = chorus::Config::parse("[coordinator]\nroster = [\"a\"]\n", "t");
  set.set("fusion.frugal.costs={ a = 4 }");
  CHECK(co::read_coordinator_config(set).algorithms.frugal.costs ==
        std::map<std::string, double>{{"a", 4.0}});
  // Unset, the written table is empty and every node costs 1.
  CHECK(chorus::testing::contains(
      co::settings_toml(co::AlgorithmSettings{}, "frugal"), "costs = {}\n"));
}

TEST_CASE(
    "coordinator config: a bad [fusion.tae] value is refused, naming the "
    "key") {
  std::vector<std::pair<std::string, std::string>> cases{
      {"readout = \"nope\"", "fusion.tae.readout"},
      {"epochs = 0", "fusion.tae.epochs must be at least 1"},
      {"head_steps = -1", "fusion.tae.head_steps must not be negative"},
      {"covariance_shrinkage = 1.5",
       "fusion.tae.covariance_shrinkage must be in [0, 1]"},
      {"conv_channels = -8", "fusion.tae.conv_channels must not be negative"},
      {"encoder_shift = -1", "fusion.tae.encoder_shift must not be negative"},
      {"answer_weight = -1", "fusion.tae.answer_weight must be finite"},
      {"answer_weight = nan", "fusion.tae.answer_weight must be finite"},
      {"epochs = \"ten\"", "fusion.tae.epochs"},
      {"epoch = 5", "fusion.tae.epoch"}};
  for (auto& c : cases) c.first = "[fusion.tae]\n" + c.first;
  check_refused(cases);
}

TEST_CASE(
    "coordinator config: a bad value in the other algorithms' tables is "
    "refused, naming the key") {
  check_refused(
      {{"[fusion.foe]\nepochs = 0", "fusion.foe.epochs must be at least 1"},
       {"[fusion.foe]\nhidden = []", "fusion.foe.hidden must list"},
       {"[fusion.foe]\nhidden = [64, 0]", "fusion.foe.hidden must list"},
       {"[fusion.foe]\nlr = 0", "fusion.foe.lr must be finite and positive"},
       {"[fusion.foe]\nlr = inf", "fusion.foe.lr must be finite"},
       {"[fusion.foe]\nfeatures = \"logits\"",
        "fusion.foe.features must be one of logprobs, probs"},
       {"[fusion.foe]\npseudo_label_confidence = 1.5",
        "fusion.foe.pseudo_label_confidence must be in [0, 1]"},
       {"[fusion.foe]\nself_training_rounds = -1",
        "fusion.foe.self_training_rounds must not be negative"},
       {"[fusion.distill]\ntemperature = 0",
        "fusion.distill.temperature must be finite and positive"},
       {"[fusion.distill]\nholdout = 1",
        "fusion.distill.holdout must be in [0, 1)"},
       {"[fusion.distill]\narch = \"mlp\"", "fusion.distill.arch"},
       {"[fusion.frugal]\nlambda = -0.1",
        "fusion.frugal.lambda must be finite and not negative"},
       {"[fusion.frugal]\nknn_k = 0", "fusion.frugal.knn_k must be at least 1"},
       {"[fusion.frugal]\ncosts = { a = 0 }",
        "fusion.frugal.costs: the cost of 'a' must be finite and positive"},
       {"[fusion.frugal]\ncosts = { a = nan }",
        "fusion.frugal.costs: the cost of 'a' must be finite"},
       {"[fusion.frugal]\ncosts = { b = 2 }",
        "fusion.frugal.costs names 'b', which is not on coordinator.roster "
        "(a)"},
       {"[fusion.frugal]\ncosts = 3",
        "'fusion.frugal.costs' must be a table of numbers"},
       {"[fusion.frugal]\ncosts = { a = \"dear\" }",
        "'fusion.frugal.costs.a' must be a number"},
       {"[fusion.dro]\ngammas = [2, -1]", "fusion.dro.gammas must list"},
       {"[fusion.dro]\nmeta_steps = 0",
        "fusion.dro.meta_steps must be at least 1"},
       {"[fusion.dro]\nonline = 3", "fusion.dro.online"}});
}
