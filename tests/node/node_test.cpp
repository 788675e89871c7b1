// The node over real loopback mutual TLS: a test coordinator endpoint (the
// protocol's Server) asks a NodeSession for predictions, pushes models and
// inspects every frame the node sends.
#include <torch/script.h>

#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <cstdlib>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "chorus/core/config.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/privacy.hpp"
#include "chorus/fusion/dro.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/gnmax.hpp"
#include "chorus/fusion/models.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/node/config.hpp"
#include "chorus/node/expert.hpp"
#include "chorus/node/local_data.hpp"
#include "chorus/node/service.hpp"
#include "chorus/node/session.hpp"
#include "chorus/protocol/audit.hpp"
#include "chorus/protocol/certs.hpp"
#include "chorus/protocol/channel.hpp"
#include "chorus/protocol/digest.hpp"
#include "chorus/protocol/tensor_codec.hpp"
#include "support/doctest.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"
#include "support/wire.hpp"

namespace pr = chorus::protocol;
namespace nd = chorus::node;
namespace fu = chorus::fusion;
namespace v1 = chorus::v1;
using chorus::Code;
using chorus::testing::code_of;
using namespace std::chrono_literals;

namespace {

using chorus::testing::contains;

struct Pki {
  pr::KeyPair ca = pr::make_ca("test-ca");
  pr::KeyPair coordinator =
      pr::issue_certificate(ca, "coordinator", pr::CertRole::kCoordinator,
                            {"localhost", "127.0.0.1"});
  pr::KeyPair alpha =
      pr::issue_certificate(ca, "alpha", pr::CertRole::kNode, {});
  pr::TlsMaterial material(const pr::KeyPair& leaf) const {
    return {ca.cert_pem, leaf.cert_pem, leaf.key_pem};
  }
};

const Pki& pki() {
  static Pki p;
  return p;
}

const std::vector<std::int64_t> kShape = {1, 4, 4};
const std::vector<std::string> kLabels = {"a", "b", "c"};

std::shared_ptr<fu::ClassifierImpl> small_model() {
  torch::manual_seed(7);
  return fu::make_classifier(fu::ModelSpec{
      .arch = "mlp", .input_shape = kShape, .num_classes = 3, .hidden = {8}});
}

std::unique_ptr<nd::Expert> builtin_expert(
    std::shared_ptr<fu::ClassifierImpl> m) {
  nd::ExpertOptions o;
  o.input_shape = kShape;
  o.labels = kLabels;
  return nd::make_builtin_expert(std::move(m), o);
}

// A coordinator endpoint on loopback that records every frame it receives.
class TestCoordinator {
 public:
  explicit TestCoordinator(std::uint16_t port = 0) {
    pr::ChannelOptions options;
    options.on_receive = [this](const v1::Envelope& e) {
      std::lock_guard lock(mutex_);
      received_.push_back(e);
    };
    server_ = std::make_unique<pr::Server>(
        io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
        pki().material(pki().coordinator), options, pr::Welcome{},
        [](const std::string& identity, const pr::Hello&) {
          return pr::Admission{.admit = identity == "alpha"};
        },
        [this](std::shared_ptr<pr::Connection> c, const pr::Hello& hello) {
          c->start(
              [](const v1::Envelope&) -> asio::awaitable<v1::Envelope> {
                chorus::fail(Code::kUnimplemented,
                             "the test coordinator serves nothing");
              },
              [](const std::string&) {});
          std::lock_guard lock(mutex_);
          connection_ = c;
          hello_ = hello;
          connected_.notify_all();
        });
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestCoordinator() { shut(); }

  void shut() {
    if (!thread_.joinable()) return;
    if (auto c = connection()) c->close("test over");
    server_->stop();
    std::this_thread::sleep_for(50ms);
    io_.stop();
    thread_.join();
  }

  std::uint16_t port() const { return server_->port(); }

  std::shared_ptr<pr::Connection> wait_connection(
      std::chrono::seconds t = 10s) {
    std::unique_lock lock(mutex_);
    connected_.wait_for(lock, t,
                        [&] { return connection_ && connection_->is_open(); });
    REQUIRE_MESSAGE(connection_ != nullptr, "the node did not connect");
    return connection_;
  }
  std::shared_ptr<pr::Connection> connection() {
    std::lock_guard lock(mutex_);
    return connection_;
  }
  void forget_connection() {
    std::lock_guard lock(mutex_);
    connection_.reset();
  }
  pr::Hello hello() {
    std::lock_guard lock(mutex_);
    return hello_;
  }
  std::vector<v1::Envelope> received() {
    std::lock_guard lock(mutex_);
    return received_;
  }

 private:
  asio::io_context io_;
  std::unique_ptr<pr::Server> server_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable connected_;
  std::shared_ptr<pr::Connection> connection_;
  pr::Hello hello_;
  std::vector<v1::Envelope> received_;
};

// A node (service + session) on its own io_context thread.
class TestNode {
 public:
  TestNode(std::unique_ptr<nd::Expert> expert, nd::NodeServiceOptions options,
           std::uint16_t port)
      : service_(std::move(expert), std::move(options)) {
    nd::SessionOptions s;
    s.host = "127.0.0.1";
    s.port = port;
    s.tls = pki().material(pki().alpha);
    s.backoff.initial = 50ms;
    s.backoff.max = 200ms;
    session_ = std::make_unique<nd::NodeSession>(io_, pool_, service_, s);
    session_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestNode() {
    session_->stop();
    std::this_thread::sleep_for(100ms);
    io_.stop();
    thread_.join();
    pool_.join();
  }
  nd::NodeService& service() { return service_; }
  nd::NodeSession& session() { return *session_; }

 private:
  asio::io_context io_;
  asio::thread_pool pool_{1};
  nd::NodeService service_;
  std::unique_ptr<nd::NodeSession> session_;
  std::thread thread_;
};

v1::Envelope predict_request(const torch::Tensor& x, std::uint32_t round = 1) {
  v1::Envelope e;
  auto* r = e.mutable_predict_request();
  r->set_round(round);
  r->set_deadline_ms(5000);
  chorus::testing::encode_tensor(x, r->mutable_inputs());
  return e;
}

// Sends a Predict; returns the outputs, or throws the node's chorus::Error.
torch::Tensor predict(pr::Connection& c, const torch::Tensor& x,
                      std::uint32_t round = 1) {
  auto reply = c.request_async(predict_request(x, round), 10s).get();
  REQUIRE(reply.has_predict_response());
  return chorus::testing::decode_tensor(reply.predict_response().outputs());
}

torch::Tensor inputs(std::int64_t n, std::uint64_t seed = 1) {
  torch::manual_seed(seed);
  return torch::rand({n, 1, 4, 4});
}

torch::Tensor local_probs(fu::ClassifierImpl& m, const torch::Tensor& x) {
  torch::NoGradGuard g;
  m.eval();
  return torch::softmax(m.forward(x), 1);
}

v1::Envelope push_chunk(std::uint32_t round, std::uint32_t index,
                        std::uint32_t count, const std::string& whole,
                        const std::string& digest, std::size_t chunk,
                        const std::string& algorithm = "foe-distill") {
  v1::Envelope e;
  auto* p = e.mutable_model_push();
  p->set_round(round);
  p->set_algorithm(algorithm);
  p->set_spec("mlp in=1x4x4 classes=3");
  p->set_chunk_index(index);
  p->set_chunk_count(count);
  p->set_total_bytes(whole.size());
  p->set_sha256(digest);
  p->set_data(whole.substr(index * chunk, chunk));
  return e;
}

// Pushes `model` in chunks of `chunk` bytes; returns the code of the first
// failure (kOk when every chunk was acknowledged).
Code push(pr::Connection& c, std::uint32_t round, const std::string& model,
          std::size_t chunk, const std::string& digest,
          std::string* message = nullptr,
          const std::string& algorithm = "foe-distill") {
  const auto count =
      static_cast<std::uint32_t>((model.size() + chunk - 1) / chunk);
  for (std::uint32_t i = 0; i < count; ++i) {
    auto code = code_of(
        [&] {
          c.request_async(
               push_chunk(round, i, count, model, digest, chunk, algorithm),
               10s)
              .get();
        },
        message);
    if (code != Code::kOk) return code;
  }
  return Code::kOk;
}

}  // namespace

TEST_CASE(
    "node: a builtin expert's Predict equals local inference, and Hello "
    "describes only its interface") {
  TestCoordinator coordinator;
  auto model = small_model();
  TestNode node(builtin_expert(model), {}, coordinator.port());
  auto c = coordinator.wait_connection();
  auto x = inputs(37);
  auto got = predict(*c, x);
  CHECK(got.sizes() == torch::IntArrayRef({37, 3}));
  CHECK(torch::allclose(got, local_probs(*model, x), 1e-5, 1e-6));

  auto hello = coordinator.hello();
  CHECK(hello.expert.labels.size() == 3);
  CHECK(hello.expert.labels[2] == "c");
  CHECK(hello.expert.input_shape.size() == 3);
  CHECK(hello.policy.max_batch == 1024);
  CHECK_FALSE(hello.policy.total_budget.has_value());
}

TEST_CASE(
    "node: the coordinator's task is checked against the expert, and uint8 "
    "inputs are scaled and normalised as the task says") {
  auto model = small_model();
  nd::NodeService service(builtin_expert(model), nd::NodeServiceOptions{});
  chorus::TaskSpec task{.name = "tiny",
                        .labels = chorus::LabelSpace({"a", "b", "c", "d"}),
                        .input_shape = {3, 32, 32},
                        .dtype = chorus::InputDType::kUInt8};
  auto why = service.accept_task(task);
  REQUIRE(why.has_value());
  CHECK(contains(*why, "takes inputs of shape [1, 4, 4]"));
  CHECK(contains(*why, "task 'tiny' has inputs of shape [3, 32, 32]"));
  task.input_shape = {1, 4, 4};
  task.labels = chorus::LabelSpace({"a", "b"});
  why = service.accept_task(task);
  REQUIRE(why.has_value());
  CHECK(contains(
      *why,
      "label 'c', which is not in the label space of task 'tiny' (a, b)"));

  // A task it fits: uint8 pixels in, (x / 255 - 0.5) / 0.25 seen by the model.
  task.labels = chorus::LabelSpace({"a", "b", "c"});
  task.normalisation = chorus::Normalisation::kPerChannel;
  task.mean = {0.5};
  task.std = {0.25};
  CHECK_FALSE(service.accept_task(task).has_value());
  torch::manual_seed(5);
  auto pixels =
      torch::randint(0, 256, {6, 1, 4, 4}, torch::kLong).to(torch::kUInt8);
  const pr::PredictCall request{.inputs = pr::to_blob(pixels)};
  auto job = service.admit_predict(request);
  auto reply = service.run_predict(*job);
  auto got = pr::to_tensor(reply.outputs);
  auto seen = (pixels.to(torch::kFloat32) / 255.0 - 0.5) / 0.25;
  CHECK(torch::allclose(got, local_probs(*model, seen), 1e-5, 1e-6));

  // Without a uint8 task, uint8 inputs are refused naming what is expected.
  CHECK_FALSE(service.accept_task(std::nullopt).has_value());
  std::string msg;
  CHECK(code_of([&] { service.admit_predict(request); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "inputs must be float32 [N, 1, 4, 4]"));
}

TEST_CASE(
    "node: the start-up check refuses a tuple, a dict or too many columns "
    "unless told how to read them, and a builtin expert's shape is honoured") {
  chorus::testing::TempDir dir;
  const auto script = std::filesystem::path(CHORUS_SOURCE_DIR) /
                      "tests/support/export_odd_modules.py";
  const auto command = "/usr/bin/python3 " + script.string() + " " +
                       dir.path().string() + " > " +
                       (dir / "export.log").string() + " 2>&1";
  REQUIRE_MESSAGE(
      std::system(command.c_str()) == 0,
      "export_odd_modules.py failed (python3-torch installed?): see "
          << (dir / "export.log").string());
  auto options = [&](const std::string& name) {
    nd::ExpertOptions o;
    o.kind = nd::ExpertKind::kTorchScript;
    o.path = dir / (name + ".pt");
    o.input_shape = {1, 4, 4};
    o.labels = {"a", "b", "c"};
    return o;
  };
  std::string msg;
  CHECK(code_of([&] { nd::load_expert(options("tuple")); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "start-up check"));
  CHECK(contains(msg, "returns a tuple of 2 elements; set expert.output_key"));
  CHECK(code_of([&] { nd::load_expert(options("dict")); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "returns a dict with keys [features, logits]"));
  CHECK(code_of([&] { nd::load_expert(options("wide")); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "its 3 labels need [1, 3]"));
  auto bad_key = options("dict");
  bad_key.output_key = "scores";
  CHECK(code_of([&] { nd::load_expert(bad_key); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "'scores' is not a key"));

  // Told which element holds the scores, both serve the same answers.
  auto from_tuple = options("tuple");
  from_tuple.output_key = "0";
  auto from_dict = options("dict");
  from_dict.output_key = "logits";
  auto x = inputs(5);
  auto a = nd::load_expert(from_tuple)->predict(x);
  auto b = nd::load_expert(from_dict)->predict(x);
  CHECK(a.sizes() == torch::IntArrayRef({5, 3}));
  CHECK(torch::allclose(a, b));

  // A TorchScript expert must say its input shape; a builtin one's, when
  // given, must be the model's.
  auto no_shape = options("rgb");
  no_shape.input_shape.clear();
  CHECK(code_of([&] { nd::load_expert(no_shape); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "expert.input_shape"));
  nd::save_builtin_expert(small_model(),
                          fu::ModelSpec{.arch = "mlp",
                                        .input_shape = kShape,
                                        .num_classes = 3,
                                        .hidden = {8}},
                          kLabels, dir / "builtin.pt");
  nd::ExpertOptions builtin;
  builtin.path = dir / "builtin.pt";
  builtin.input_shape = {3, 32, 32};
  CHECK(code_of([&] { nd::load_expert(builtin); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg,
                 "expert.input_shape is [3, 32, 32], but the builtin expert"));
  CHECK(contains(msg, "trained on inputs of [1, 4, 4]"));
  builtin.input_shape = kShape;
  CHECK(nd::load_expert(builtin)->input_shape() == kShape);
}

TEST_CASE(
    "node: a TorchScript module exported by the example script is served "
    "exactly") {
  chorus::testing::TempDir dir;
  const auto script = std::filesystem::path(CHORUS_SOURCE_DIR) /
                      "examples/byo-expert/export_expert.py";
  const auto out = dir / "expert.pt";
  // Debian's python3-torch (scripts/install-deps.sh) lives in /usr/bin/python3.
  const auto command = "/usr/bin/python3 " + script.string() +
                       " --steps 0 --out " + out.string() + " > " +
                       (dir / "export.log").string() + " 2>&1";
  const int status = std::system(command.c_str());
  REQUIRE_MESSAGE(status == 0,
                  "the export script failed (is python3-torch installed? "
                  "run scripts/install-deps.sh): see "
                      << (dir / "export.log").string());

  nd::ExpertOptions o;
  o.kind = nd::ExpertKind::kTorchScript;
  o.path = out;
  o.input_shape = {1, 28, 28};
  o.labels = {"Sandal", "Sneaker", "Bag", "Ankle boot"};
  TestCoordinator coordinator;
  TestNode node(nd::load_expert(o), {}, coordinator.port());
  auto c = coordinator.wait_connection();
  torch::manual_seed(3);
  auto x = torch::rand({20, 1, 28, 28});
  auto got = predict(*c, x);

  auto module = torch::jit::load(out.string());
  module.eval();
  torch::NoGradGuard g;
  auto expected = torch::softmax(module.forward({x}).toTensor(), 1);
  CHECK(torch::allclose(got, expected, 1e-5, 1e-6));

  // A module whose outputs do not match the configured labels is refused
  // by the start-up check, not mid-round.
  o.labels = {"Sandal", "Sneaker"};
  std::string msg;
  CHECK(code_of([&] { nd::load_expert(o); }, &msg) == Code::kInvalidArgument);
  CHECK(
      contains(msg, "answered [1, 4] for 1 inputs; its 2 labels need [1, 2]"));
}

TEST_CASE(
    "node: bad inputs are refused precisely, spend nothing, and the node "
    "keeps serving") {
  TestCoordinator coordinator;
  nd::NodeServiceOptions options;
  options.policy.budget.max_batch = 16;
  options.policy.budget.total_budget = 100;
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();
  std::string msg;

  CHECK(code_of(
            [&] {
              predict(*c, torch::rand({4, 1, 5, 5}));
            },
            &msg) == Code::kInvalidArgument);
  CHECK(contains(msg, "float32 [N, 1, 4, 4] with 1 <= N <= 16"));
  CHECK(contains(msg, "got [4, 1, 5, 5]"));

  CHECK(code_of(
            [&] {
              predict(*c, torch::ones({4, 1, 4, 4}, torch::kUInt8));
            },
            &msg) == Code::kInvalidArgument);
  CHECK(contains(msg, "got dtype DTYPE_UINT8"));

  auto nan = inputs(4);
  nan[2][0][1][1] = std::nanf("");
  CHECK(code_of([&] { predict(*c, nan); }, &msg) == Code::kInvalidArgument);
  CHECK(contains(msg, "NaN or infinite"));

  CHECK(code_of([&] { predict(*c, inputs(17)); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "got a batch of 17"));

  // A tensor whose bytes do not match its shape.
  auto bad = predict_request(inputs(2));
  bad.mutable_predict_request()->mutable_inputs()->mutable_data()->resize(10);
  CHECK(code_of([&] { c->request_async(bad, 10s).get(); }, &msg) ==
        Code::kInvalidArgument);

  CHECK(node.service().inputs_answered() == 0);
  CHECK(predict(*c, inputs(16)).size(0) == 16);
  CHECK(node.service().inputs_answered() == 16);
}

TEST_CASE(
    "node: budgets are enforced per round and in total, naming what "
    "remains") {
  TestCoordinator coordinator;
  chorus::testing::TempDir dir;
  nd::NodeServiceOptions options;
  options.policy.budget.max_batch = 8;
  options.policy.budget.total_budget = 20;
  options.policy.budget.round_budget = 12;
  options.audit_log = dir / "audit.jsonl";
  options.state_dir = dir / "state";
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();
  std::string msg;

  CHECK(predict(*c, inputs(8), 1).size(0) == 8);
  CHECK(code_of([&] { predict(*c, inputs(5), 1); }, &msg) ==
        Code::kResourceExhausted);
  CHECK(contains(msg, "round budget: 4 of 12 remaining"));
  // The request's round field alone does not renew the round budget: no
  // model of round 1 was pushed, so round 5 is still round 1 here.
  CHECK(code_of([&] { predict(*c, inputs(5), 5); }, &msg) ==
        Code::kResourceExhausted);
  CHECK(contains(msg, "round budget: 4 of 12 remaining"));
  CHECK(predict(*c, inputs(4), 1).size(0) == 4);
  // Round 1's model pushed: round 2 renews the round budget, not the total.
  const std::string model(100, 'm');
  REQUIRE(push(*c, 1, model, 100, pr::sha256(model)) == Code::kOk);
  CHECK(predict(*c, inputs(8), 2).size(0) == 0 + 8);
  CHECK(code_of([&] { predict(*c, inputs(1), 2); }, &msg) ==
        Code::kResourceExhausted);
  CHECK(contains(msg, "total budget: 0 of 20 remaining"));
  auto reply = c->request_async(predict_request(inputs(1), 3), 10s);
  CHECK_THROWS_AS(reply.get(), chorus::Error);

  auto summary = chorus::protocol::summarise_audit(dir / "audit.jsonl");
  CHECK(summary.requests == 8);
  CHECK(summary.inputs_answered == 20);
  CHECK(summary.by_outcome["OK"] == 4);
  CHECK(summary.by_outcome["RESOURCE_EXHAUSTED"] == 4);
  CHECK(summary.by_peer["coordinator"] == 8);
  REQUIRE(summary.budget_left.has_value());
  CHECK(*summary.budget_left == 0);
  CHECK(summary.malformed_lines == 0);
}

TEST_CASE(
    "node: every refusal is audited, the transport's own included, and an "
    "answer that could not be delivered is recorded as such") {
  chorus::testing::TempDir dir;
  // Until `kind` appears in the audit log with `outcome` (5 s at most).
  auto audited = [&](const std::string& kind, const std::string& outcome) {
    for (int i = 0; i < 500; ++i) {
      if (std::filesystem::exists(dir / "audit.jsonl")) {
        std::istringstream lines(chorus::read_file(dir / "audit.jsonl"));
        for (std::string line; std::getline(lines, line);) {
          auto j = nlohmann::json::parse(line);
          if (j.at("kind") == kind && j.at("outcome") == outcome) return j;
        }
      }
      std::this_thread::sleep_for(10ms);
    }
    return nlohmann::json();
  };
  TestCoordinator coordinator;
  nd::NodeServiceOptions options;
  options.audit_log = dir / "audit.jsonl";
  options.policy.rate_limit = 100;  // inputs per second
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();

  // A request with request_id 0 is refused by the transport: audited.
  c->send(predict_request(inputs(3), 1));
  auto refused = audited("predict", "INVALID_ARGUMENT");
  REQUIRE_FALSE(refused.is_null());
  CHECK(refused.at("request_id") == 0);
  CHECK(refused.at("inputs") == 3);
  CHECK(refused.at("message") == "a request needs a non-zero request_id");

  // Answered after the coordinator hung up: recorded as not delivered.
  CHECK(predict(*c, inputs(100), 1).size(0) == 100);  // the rate's burst
  auto pending = c->request_async(predict_request(inputs(100), 1), 10s);
  std::this_thread::sleep_for(100ms);  // in the node's rate wait
  c->close("gone");
  auto undelivered = audited("undelivered", "UNAVAILABLE");
  REQUIRE_FALSE(undelivered.is_null());
  CHECK(undelivered.at("inputs") == 100);
  CHECK(undelivered.at("request_id").get<std::uint64_t>() > 0);
  CHECK_THROWS_AS(pending.get(), chorus::Error);
}

TEST_CASE(
    "node: an answer that cannot be audited is withheld (UNAVAILABLE), and "
    "the node keeps serving") {
  if (!std::filesystem::exists("/dev/full")) {
    MESSAGE("skipped: no /dev/full to make the audit log's disk full");
    CHECK(true);
    return;
  }
  TestCoordinator coordinator;
  nd::NodeServiceOptions options;
  options.audit_log = "/dev/full";  // Every write fails: no space left.
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();
  std::string msg;
  CHECK(code_of([&] { predict(*c, inputs(4), 1); }, &msg) ==
        Code::kUnavailable);
  CHECK(contains(msg, "cannot write its audit record"));
  CHECK(contains(msg, "/dev/full"));
  // Still up: the next request gets the same clear refusal.
  CHECK(code_of([&] { predict(*c, inputs(2), 1); }, &msg) ==
        Code::kUnavailable);
}

TEST_CASE(
    "node: output forms — label only, top-k, temperature and seeded noise") {
  auto model = small_model();
  auto x = inputs(50);
  auto reference = local_probs(*model, x);

  auto answer = [&](nd::QueryPolicy policy) {
    TestCoordinator coordinator;
    nd::NodeServiceOptions options;
    options.policy = policy;
    TestNode node(builtin_expert(model), options, coordinator.port());
    auto c = coordinator.wait_connection();
    auto reply = c->request_async(predict_request(x), 10s).get();
    return std::make_pair(
        chorus::testing::decode_tensor(reply.predict_response().outputs()),
        reply.predict_response());
  };

  SUBCASE("label only: one-hot of the arg-max") {
    nd::QueryPolicy p;
    p.output_form = nd::OutputForm::kLabelOnly;
    auto [out, r] = answer(p);
    CHECK(r.form() == v1::OUTPUT_FORM_LABEL_ONLY);
    CHECK(torch::equal(out.argmax(1), reference.argmax(1)));
    CHECK(torch::equal(out.sum(1), torch::ones({50})));
    CHECK(out.eq(0).logical_or(out.eq(1)).all().item<bool>());
  }
  SUBCASE("top-k: the k largest kept, the rest zero") {
    nd::QueryPolicy p;
    p.output_form = nd::OutputForm::kTopK;
    p.top_k = 2;
    auto [out, r] = answer(p);
    CHECK(r.form() == v1::OUTPUT_FORM_TOP_K);
    CHECK(out.ne(0).sum(1).eq(2).all().item<bool>());
    CHECK(torch::allclose(std::get<0>(out.max(1)),
                          std::get<0>(reference.max(1))));
  }
  SUBCASE("temperature flattens, keeping the ranking") {
    nd::QueryPolicy p;
    p.temperature = 4.0;
    auto [out, r] = answer(p);
    CHECK(torch::equal(out.argmax(1), reference.argmax(1)));
    CHECK((std::get<0>(out.max(1)) <= std::get<0>(reference.max(1)) + 1e-6)
              .all()
              .item<bool>());
    CHECK(torch::allclose(out.sum(1), torch::ones({50}), 1e-5));
  }
  SUBCASE("noise: recorded, renormalised, reproducible from its seed") {
    nd::QueryPolicy p;
    p.noise_std = 0.1;
    p.noise_seed = 42;
    auto [out, r] = answer(p);
    auto [again, r2] = answer(p);
    CHECK(r.noise_std() == doctest::Approx(0.1));
    CHECK_FALSE(torch::allclose(out, reference, 1e-3));
    CHECK(torch::allclose(out.sum(1), torch::ones({50}), 1e-5));
    CHECK((out >= 0).all().item<bool>());
    CHECK(torch::equal(out, again));
  }
}

TEST_CASE(
    "node: rate limiting paces inputs and refuses what would miss the "
    "deadline") {
  nd::RateLimiter limiter(100.0);  // inputs per second
  CHECK(limiter.reserve(50, 1000ms).count() == 0);
  auto wait = limiter.reserve(50, 1000ms);
  CHECK(wait.count() >= 400);
  CHECK(wait.count() <= 500);
  std::string msg;
  CHECK(code_of([&] { limiter.reserve(100, 100ms); }, &msg) ==
        Code::kResourceExhausted);
  CHECK(contains(msg, "rate limit of 100 inputs/s"));
  nd::RateLimiter unlimited(0);
  CHECK(unlimited.reserve(1'000'000, 0ms).count() == 0);
}

TEST_CASE(
    "node: pushed models are reassembled, verified and stored atomically, "
    "and corrupt pushes keep the previous model") {
  TestCoordinator coordinator;
  chorus::testing::TempDir dir;
  nd::NodeServiceOptions options;
  options.state_dir = dir / "state";
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();
  std::string model(10'000, '\0');
  for (std::size_t i = 0; i < model.size(); ++i)
    model[i] = static_cast<char>(i * 7);
  const auto digest = pr::sha256(model);
  std::string msg;

  REQUIRE(push(*c, 1, model, 3000, digest) == Code::kOk);
  auto stored = node.service().stored_model();
  REQUIRE(stored.has_value());
  CHECK(stored->round == 1);
  CHECK(stored->algorithm == "foe-distill");
  CHECK(stored->sha256_hex == pr::to_hex(digest));
  CHECK(chorus::read_file(stored->file) == model);

  // A wrong digest: DATA_LOSS, round 1 kept.
  auto tampered = model;
  tampered[5000] ^= 1;
  CHECK(push(*c, 2, tampered, 3000, digest, &msg) == Code::kDataLoss);
  CHECK(contains(msg, "digest does not match"));
  CHECK(node.service().stored_model()->round == 1);

  // A missing chunk: the next one is out of order.
  CHECK(code_of([&] {
          c->request_async(push_chunk(3, 0, 4, model, digest, 3000), 10s).get();
        }) == Code::kOk);
  CHECK(code_of(
            [&] {
              c->request_async(push_chunk(3, 2, 4, model, digest, 3000), 10s)
                  .get();
            },
            &msg) == Code::kFailedPrecondition);
  CHECK(contains(msg, "out of order"));
  // Truncated: chunks that add up to less than announced.
  auto short_push = push_chunk(4, 0, 1, model, digest, 3000);
  CHECK(code_of([&] { c->request_async(short_push, 10s).get(); }, &msg) ==
        Code::kDataLoss);
  CHECK(node.service().stored_model()->round == 1);
  CHECK_FALSE(std::filesystem::exists(dir / "state" / "global-round-2.pt"));

  // The manifest survives a restart of the node's service.
  auto reread = nd::read_stored_model(dir / "state");
  REQUIRE(reread.has_value());
  CHECK(reread->round == 1);
}

TEST_CASE(
    "node: a push of a round older than the coordinator's is refused and the "
    "stored model kept, and a new coordinator run may start again at 1") {
  TestCoordinator coordinator;
  chorus::testing::TempDir dir;
  nd::NodeServiceOptions options;
  options.state_dir = dir / "state";
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();
  const std::string model(5'000, 'm');
  const auto digest = pr::sha256(model);
  std::string msg;
  REQUIRE(push(*c, 3, model, 2048, digest) == Code::kOk);
  // A delayed or replayed push of round 2 after round 3's.
  CHECK(push(*c, 2, model, 2048, digest, &msg) == Code::kFailedPrecondition);
  CHECK_MESSAGE(contains(msg, "a model of round 2 is older than round 3"), msg);
  CHECK(contains(msg, "previous model kept"));
  CHECK(node.service().stored_model()->round == 3);
  CHECK_FALSE(std::filesystem::exists(dir / "state" / "global-round-2.pt"));
  // The same round again (a resumed coordinator) and the next are taken.
  CHECK(push(*c, 3, model, 2048, digest) == Code::kOk);
  CHECK(push(*c, 4, model, 2048, digest) == Code::kOk);
  CHECK(node.service().stored_model()->round == 4);
  // A Welcome says where a coordinator is: one at round 5 makes 4 stale.
  node.service().welcomed(5);
  CHECK(push(*c, 4, model, 2048, digest, &msg) == Code::kFailedPrecondition);
  CHECK(contains(msg, "older than round 5"));
  // A new run of a coordinator welcomes at round 0 and pushes round 1.
  node.service().welcomed(0);
  CHECK(push(*c, 1, model, 2048, digest) == Code::kOk);
  CHECK(node.service().stored_model()->round == 1);
}

TEST_CASE(
    "node: never sends weights — every frame of a full session is Hello, "
    "PredictResponse, AdaptResponse, Heartbeat, Status or Goodbye") {
  auto coordinator = std::make_unique<TestCoordinator>();
  chorus::testing::TempDir dir;
  nd::NodeServiceOptions options;
  options.state_dir = dir / "state";
  {
    TestNode node(builtin_expert(small_model()), options, coordinator->port());
    auto c = coordinator->wait_connection();
    predict(*c, inputs(10));
    CHECK(code_of([&] { predict(*c, inputs(3, 1).to(torch::kFloat16)); }) ==
          Code::kInvalidArgument);
    std::string model(5000, 'm');
    CHECK(push(*c, 1, model, 2048, pr::sha256(model)) == Code::kOk);
    v1::Envelope adapt;
    adapt.mutable_adapt_request()->set_round(1);
    CHECK(code_of([&] { c->request_async(adapt, 10s).get(); }) ==
          Code::kFailedPrecondition);  // No shots, no tae model.
  }                                    // The node says Goodbye.
  std::this_thread::sleep_for(200ms);
  auto frames = coordinator->received();
  coordinator.reset();
  const std::set<v1::Envelope::BodyCase> allowed = {
      v1::Envelope::kHello,         v1::Envelope::kPredictResponse,
      v1::Envelope::kAdaptResponse, v1::Envelope::kHeartbeat,
      v1::Envelope::kStatus,        v1::Envelope::kGoodbye};
  std::map<v1::Envelope::BodyCase, int> seen;
  for (const auto& f : frames) {
    CHECK_MESSAGE(allowed.count(f.body_case()),
                  "the node sent " << f.DebugString());
    ++seen[f.body_case()];
  }
  CHECK(seen[v1::Envelope::kHello] == 1);
  CHECK(seen[v1::Envelope::kPredictResponse] == 1);
  CHECK(seen[v1::Envelope::kStatus] == 5);  // Refusal, 3 push acks, adapt.
  CHECK(seen[v1::Envelope::kGoodbye] == 1);
}

TEST_CASE(
    "node: reconnects after the coordinator restarts, and survives it "
    "vanishing mid-request") {
  auto first = std::make_unique<TestCoordinator>();
  const auto port = first->port();
  TestNode node(builtin_expert(small_model()), {}, port);
  auto c = first->wait_connection();
  CHECK(predict(*c, inputs(4)).size(0) == 4);
  auto pending = c->request_async(predict_request(inputs(1000)), 10s);
  c.reset();      // The connection lives on the coordinator's io_context,
  first.reset();  // which goes now, with the request in flight.
  (void)pending.wait_for(5s);

  TestCoordinator second(port);
  auto c2 = second.wait_connection(15s);
  CHECK(predict(*c2, inputs(4)).size(0) == 4);
  CHECK(node.session().sessions() == 2);
}

TEST_CASE("node config: defaults, overrides, and unknown keys named") {
  chorus::testing::TempDir dir;
  {
    std::ofstream(dir / "node.toml")
        << "[node]\nname = \"alpha\"\n"
           "[policy]\nmax_batch = 64\nround_budget = 500\n"
           "output_form = \"top-k\"\ntop_k = 2\n"
           "[expert]\nkind = \"torchscript\"\n"
           "labels = [\"x\", \"y\"]\n";
  }
  auto config = chorus::Config::load(dir / "node.toml");
  config.set("policy.max_batch=128");
  config.set("coordinator.host=fusion.example.org");
  auto n = nd::read_node_config(config);
  CHECK(n.policy.budget.max_batch == 128);
  CHECK(n.policy.budget.round_budget == 500);
  CHECK_FALSE(n.policy.budget.total_budget.has_value());
  CHECK(n.policy.output_form == nd::OutputForm::kTopK);
  CHECK(n.host == "fusion.example.org");
  CHECK(n.cert == dir / "pki/alpha.crt");
  CHECK(n.expert.kind == nd::ExpertKind::kTorchScript);
  CHECK(n.audit_log == dir / "state/audit.jsonl");

  std::string msg;
  auto typo = chorus::Config::parse("[policy]\nmax_bach = 3\n", "typo.toml");
  CHECK(code_of([&] { nd::read_node_config(typo); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "unknown config key 'policy.max_bach'"));
  auto wrong =
      chorus::Config::parse("[policy]\nmax_batch = \"many\"\n", "wrong.toml");
  CHECK(code_of([&] { nd::read_node_config(wrong); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "'policy.max_batch' must be an integer"));
  auto negative =
      chorus::Config::parse("[policy]\ntotal_budget = -1\n", "neg.toml");
  CHECK(code_of([&] { nd::read_node_config(negative); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "total_budget must be >= 0"));
  CHECK(code_of([&] { chorus::Config::parse("[policy\n", "broken.toml"); },
                &msg) == Code::kInvalidArgument);
  CHECK(contains(msg, "broken.toml:1:"));
}

TEST_CASE(
    "node: [policy.privacy] is read, needs label-only answers and epsilon, "
    "and shows in --print-config") {
  auto ok = chorus::Config::parse(
      "[policy]\noutput_form = \"label-only\"\n[policy.privacy]\n"
      "epsilon = 3\nsigma = 25\n",
      "dp.toml");
  const auto n = nd::read_node_config(ok);
  REQUIRE(n.policy.budget.privacy.has_value());
  CHECK(n.policy.budget.privacy->epsilon == 3);
  CHECK(n.policy.budget.privacy->sigma == 25);
  CHECK(n.policy.budget.privacy->delta == 1e-5);
  CHECK(contains(nd::to_toml(n), "[policy.privacy]\nepsilon = 3\n"));
  std::string msg;
  auto probabilities = chorus::Config::parse(
      "[policy.privacy]\nepsilon = 3\nsigma = 25\n", "dp.toml");
  CHECK(code_of([&] { nd::read_node_config(probabilities); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "output_form = \"label-only\""));
  auto no_epsilon = chorus::Config::parse(
      "[policy]\noutput_form = \"label-only\"\n[policy.privacy]\n"
      "sigma = 25\n",
      "dp.toml");
  CHECK(code_of([&] { nd::read_node_config(no_epsilon); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "needs epsilon"));
}

TEST_CASE(
    "node: [train.privacy] is read, needs exactly one of epsilon and "
    "noise_multiplier, and shows in --print-config") {
  auto ok = chorus::Config::parse(
      "[train.privacy]\nepsilon = 3\nmax_grad_norm = 0.5\n", "dp.toml");
  const auto n = nd::read_node_config(ok);
  REQUIRE(n.train.privacy().has_value());
  CHECK(n.train.privacy()->epsilon() == 3);
  CHECK(n.train.privacy()->noise_multiplier() == 0);
  CHECK(n.train.privacy()->max_grad_norm() == 0.5);
  CHECK(n.train.privacy()->delta() == 1e-5);
  CHECK(contains(nd::to_toml(n), "[train.privacy]\nepsilon = 3\n"));
  auto none = chorus::Config::parse("", "none.toml");
  CHECK(contains(nd::to_toml(nd::read_node_config(none)),
                 "# epsilon = (none: trained without DP-SGD)"));
  std::string msg;
  for (const char* text :
       {"[train.privacy]\nepsilon = 3\nnoise_multiplier = 1\n",
        "[train.privacy]\nepsilon = -1\n"}) {
    auto bad = chorus::Config::parse(text, "dp.toml");
    CHECK(code_of([&] { nd::read_node_config(bad); }, &msg) ==
          Code::kInvalidArgument);
    CHECK(contains(msg, "exactly one of epsilon"));
  }
  auto only_delta =
      chorus::Config::parse("[train.privacy]\ndelta = 1e-6\n", "dp.toml");
  CHECK(code_of([&] { nd::read_node_config(only_delta); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "needs epsilon or noise_multiplier"));
  auto bad_delta = chorus::Config::parse(
      "[train.privacy]\nnoise_multiplier = 1\ndelta = 2\n", "dp.toml");
  CHECK(code_of([&] { nd::read_node_config(bad_delta); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "train.privacy.delta must be in (0, 1)"));
}

TEST_CASE(
    "node: an expert trained with DP-SGD carries its guarantee in its file "
    "and announces it in Hello") {
  TestCoordinator coordinator;
  chorus::testing::TempDir dir;
  const fu::ModelSpec spec{
      .arch = "mlp", .input_shape = kShape, .num_classes = 3, .hidden = {8}};
  fu::DpGuarantee g;
  g.epsilon = 2.5;
  g.delta = 1e-6;
  g.noise_multiplier = 1.25;
  g.sample_rate = 0.01;
  g.steps = 300;
  g.max_grad_norm = 1;
  nd::save_builtin_expert(small_model(), spec, kLabels, dir / "dp.pt", g);
  nd::ExpertOptions o;
  o.path = dir / "dp.pt";
  auto expert = nd::load_expert(o);
  REQUIRE(expert->options().training_privacy.has_value());
  CHECK(expert->options().training_privacy->epsilon == 2.5);
  CHECK(expert->options().training_privacy->steps == 300);
  TestNode node(std::move(expert), {}, coordinator.port());
  coordinator.wait_connection();
  const auto hello = coordinator.hello();
  REQUIRE(hello.policy.privacy.size() == 1);
  const auto& a = hello.policy.privacy[0];
  CHECK(a.mechanism == "dp-sgd");
  CHECK(a.epsilon == 2.5);
  CHECK(a.delta == 1e-6);
  CHECK(a.accountant == "rdp-sampled-gaussian");
  CHECK(a.parameters.at("noise_multiplier") == "1.25");
  CHECK(a.parameters.at("steps") == "300");

  // An expert without one announces none; a corrupt guarantee is refused.
  nd::save_builtin_expert(small_model(), spec, kLabels, dir / "plain.pt");
  o.path = dir / "plain.pt";
  CHECK_FALSE(nd::load_expert(o)->options().training_privacy.has_value());
  auto file = fu::load_fused_model(dir / "dp.pt");
  file.attributes["privacy"] = "{\"mechanism\": \"dp-sgd\"}";
  fu::save_fused_model(file, dir / "broken.pt");
  o.path = dir / "broken.pt";
  std::string msg;
  CHECK(code_of([&] { nd::load_expert(o); }, &msg) == Code::kDataLoss);
  CHECK(contains(msg, "its DP-SGD guarantee is unreadable"));
}

TEST_CASE(
    "node: with a privacy budget it answers noisy labels, refuses the first "
    "query past epsilon and keeps serving within it") {
  TestCoordinator coordinator;
  chorus::testing::TempDir dir;
  nd::NodeServiceOptions options;
  options.policy.budget.max_batch = 64;
  options.policy.output_form = nd::OutputForm::kLabelOnly;
  options.policy.budget.privacy =
      nd::PrivacyBudget{.epsilon = 1.0, .delta = 1e-5, .sigma = 20.0};
  options.audit_log = dir / "audit.jsonl";
  options.state_dir = dir / "state";
  const auto cap = chorus::privacy::gnmax_max_answers(20.0, 1.0, 1e-5);
  REQUIRE(cap > 8);
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();
  // Its Hello states the mechanism, the budget and what is spent.
  const auto hello = coordinator.hello();
  REQUIRE(hello.policy.privacy.size() == 1);
  CHECK(hello.policy.privacy[0].mechanism == "gnmax");
  CHECK(hello.policy.privacy[0].epsilon == 1.0);
  CHECK(hello.policy.privacy[0].epsilon_spent == 0);
  CHECK(hello.policy.privacy[0].parameters.at("sigma") == "20");

  std::int64_t answered = 0;
  while (answered + 64 <= cap - 4) {
    auto p = predict(*c, inputs(64));
    // Labels: one 1 per row.
    CHECK(p.sum(1).eq(1).all().item<bool>());
    CHECK(p.eq(0).logical_or(p.eq(1)).all().item<bool>());
    answered += 64;
  }
  const auto rest = cap - 4 - answered;
  if (rest > 0) CHECK(predict(*c, inputs(rest)).size(0) == rest);
  std::string msg;
  CHECK(code_of([&] { predict(*c, inputs(5)); }, &msg) ==
        Code::kResourceExhausted);
  CHECK(contains(msg, "exceeds the privacy budget"));
  CHECK(contains(msg, "4 more answers fit"));
  CHECK(predict(*c, inputs(4)).size(0) == 4);  // Still serving within it.
  CHECK(node.service().inputs_answered() == cap);

  // Every audit line carries ε spent; the last is within the budget.
  const auto log = chorus::read_file(dir / "audit.jsonl");
  CHECK(contains(log, "\"epsilon_spent\":"));
  const auto last = log.rfind("\"epsilon_spent\":");
  CHECK(std::stod(log.substr(last + 16)) <= 1.0);
}

TEST_CASE(
    "node: a teacher ensemble keeps every teacher in its file, predicts their "
    "mean, votes one each, and answers GNMax over the votes") {
  TestCoordinator coordinator;
  chorus::testing::TempDir dir;
  const fu::ModelSpec spec{
      .arch = "mlp", .input_shape = kShape, .num_classes = 3, .hidden = {8}};
  std::vector<std::shared_ptr<fu::ClassifierImpl>> teachers;
  for (std::uint64_t k = 0; k < 5; ++k) {
    auto gen = fu::make_generator(100 + k);
    teachers.push_back(fu::make_classifier(spec, gen));
  }
  nd::save_builtin_expert(teachers, spec, kLabels, dir / "ensemble.pt");
  CHECK(fu::load_fused_model(dir / "ensemble.pt").attributes.at("teachers") ==
        "5");
  nd::ExpertOptions o;
  o.path = dir / "ensemble.pt";
  auto expert = nd::load_expert(o);
  REQUIRE(expert->teachers() == 5);
  const auto x = inputs(40, 3);
  std::vector<torch::Tensor> each;
  auto mean = torch::zeros({40, 3});
  for (const auto& t : teachers) {
    each.push_back(local_probs(*t, x));
    mean += each.back();
  }
  mean /= 5.0;
  CHECK(torch::allclose(expert->predict(x), mean, 1e-5, 1e-6));
  const auto votes = expert->votes(x);
  CHECK(votes.sum(1).eq(5).all().item<bool>());
  CHECK(torch::equal(votes, fu::vote_histogram(each)));
  // The teachers differ: some rows are not unanimous.
  CHECK(std::get<0>(votes.max(1)).lt(5).any().item<bool>());
  // A one-model expert is one teacher: its one-hot argmax.
  auto single = builtin_expert(teachers[0]);
  CHECK(single->teachers() == 1);
  CHECK(torch::equal(single->votes(x),
                     fu::vote_histogram({local_probs(*teachers[0], x)})));
  // An ensemble shares no weights (there is no one model to share).
  CHECK(expert->builtin_model() == nullptr);

  // Under a budget with little noise (a huge ε), GNMax answers the
  // plurality of the votes wherever it is clear, and Hello says how many
  // teachers vote.
  nd::NodeServiceOptions options;
  options.policy.output_form = nd::OutputForm::kLabelOnly;
  options.policy.budget.privacy =
      nd::PrivacyBudget{.epsilon = 1e9, .delta = 1e-5, .sigma = 0.05};
  TestNode node(std::move(expert), options, coordinator.port());
  auto c = coordinator.wait_connection();
  const auto hello = coordinator.hello();
  REQUIRE(hello.policy.privacy.size() == 1);
  CHECK(hello.policy.privacy[0].parameters.at("teachers") == "5");
  auto answer = predict(*c, x);
  auto top = std::get<0>(votes.topk(2, 1));
  auto clear = (top.select(1, 0) - top.select(1, 1)).ge(1);
  REQUIRE(clear.sum().item<std::int64_t>() > 10);
  CHECK(torch::equal(answer.argmax(1).masked_select(clear),
                     votes.argmax(1).masked_select(clear)));
  CHECK(answer.sum(1).eq(1).all().item<bool>());
}

TEST_CASE(
    "node: adapts a pushed tae model with its private shots and returns only "
    "its prototype embedding") {
  chorus::testing::TempDir dir;
  // A small global model over the node's three labels and 16-pixel inputs.
  torch::manual_seed(5);
  fu::TaeModel tae(
      16, 3, 3,
      fu::TaeOptions()
          .network(fu::TaeNetworkOptions().prototypes(20))
          .training(fu::TaeTrainingOptions().epochs(2))
          .adaptation(fu::TaeAdaptationOptions().samples(3).steps(20)));
  auto pool = torch::rand({300, 1, 4, 4});
  // One expert, of the first two labels: the node's third is one no expert
  // answered for, so its task is read out by features (a head).
  auto answers = torch::softmax(torch::randn({300, 3}), 1);
  answers.select(1, 2).zero_();
  answers = answers / answers.sum(1, true);
  tae.train(fu::TaeData{.inputs = pool,
                        .answers = {answers},
                        .tasks = {torch::tensor({1.0f, 1.0f, 0.0f})}});
  tae.set_labels(kLabels);
  tae.save(dir / "tae.pt");
  const auto bytes = chorus::read_file(dir / "tae.pt");

  TestCoordinator coordinator;
  nd::NodeServiceOptions options;
  options.state_dir = dir / "state";
  options.shots = std::make_shared<nd::LabelledShots>(
      nd::LabelledShots{torch::rand({6, 1, 4, 4}),
                        torch::tensor({0, 0, 1, 1, 2, 2}, torch::kLong)});
  TestNode node(builtin_expert(small_model()), options, coordinator.port());
  auto c = coordinator.wait_connection();
  CHECK(coordinator.hello().can("adapt"));
  v1::Envelope adapt;
  adapt.mutable_adapt_request()->set_round(1);
  std::string msg;
  CHECK(code_of([&] { c->request_async(adapt, 10s).get(); }, &msg) ==
        Code::kFailedPrecondition);
  CHECK(contains(msg, "no tae or dro global model"));

  REQUIRE(push(*c, 1, bytes, 4096, pr::sha256(bytes), nullptr, "tae") ==
          Code::kOk);
  auto reply = c->request_async(adapt, 30s).get();
  REQUIRE(reply.has_adapt_response());
  const auto& r = reply.adapt_response();
  auto mean = chorus::testing::decode_tensor(r.embedding_mean());
  auto logvar = chorus::testing::decode_tensor(r.embedding_logvar());
  CHECK(mean.sizes() == torch::IntArrayRef({2}));
  CHECK(logvar.sizes() == torch::IntArrayRef({2}));
  CHECK_FALSE(pr::has_non_finite(mean));
  CHECK(r.shots() == 6);
  CHECK(std::isfinite(r.bound()));
  // Two 2-float tensors, a count and a bound: nothing of the shots.
  CHECK(r.ByteSizeLong() < 64);
  CHECK(reply.ByteSizeLong() < 80);
  // What the shots taught the prototypes (their relabelled votes) stays at
  // the node, beside the embedding, in adapted.json.
  auto local = tae.read_adapted_task(options.state_dir / "adapted.json");
  CHECK(local.classes == std::vector<std::int64_t>{0, 1, 2});
  CHECK(torch::allclose(local.q.mean, mean));
  REQUIRE(local.votes.defined());
  CHECK(local.votes.sizes() == torch::IntArrayRef({20, 3}));
  // So does the features readout's head (the shots' class means, trained),
  // and the task predicts with it as the node does.
  REQUIRE(local.head_weight.defined());
  CHECK(local.head_weight.sizes() ==
        torch::IntArrayRef({3, tae.feature_dim()}));
  CHECK(local.head_bias.sizes() == torch::IntArrayRef({3}));
  const auto served = tae.predict(options.shots->inputs, local);
  CHECK(served.sizes() == torch::IntArrayRef({6, 3}));
  CHECK(torch::allclose(served.sum(1), torch::ones({6})));

  // A task descriptor of the wrong size is refused, naming the size.
  adapt.mutable_adapt_request()->add_task_descriptor(1.0f);
  CHECK(code_of([&] { c->request_async(adapt, 10s).get(); }, &msg) ==
        Code::kInvalidArgument);
  CHECK(contains(msg, "the global model takes 3"));
}

TEST_CASE(
    "node: adapts a pushed dro initialisation with its private shots, keeps "
    "the adapted model and sends back only counts") {
  chorus::testing::TempDir dir;
  // A 5-way initialisation of the node's input shape; the node's task has 3
  // classes, so its head is resized.
  const fu::ModelSpec spec{
      .arch = "mlp", .input_shape = kShape, .num_classes = 5, .hidden = {8}};
  auto gen = fu::make_generator(3);
  auto init_model = fu::make_classifier(spec, gen);
  auto init = fu::dro_model(
      spec, fu::DroFit{.init = fu::flatten_model(*init_model)}, "imitators", 4,
      fu::DroOptions().adapt_steps(40).adapt_lr(0.1));
  init.attributes["labels"] = R"(["a","b","c","d"])";
  fu::save_fused_model(init, dir / "dro.pt");
  const auto bytes = chorus::read_file(dir / "dro.pt");

  auto coordinator = std::make_unique<TestCoordinator>();
  nd::NodeServiceOptions options;
  options.state_dir = dir / "state";
  // Two well-separated shots per class: brightness tells the classes apart.
  auto shots_x = torch::cat({torch::full({2, 1, 4, 4}, 0.1),
                             torch::full({2, 1, 4, 4}, 0.5),
                             torch::full({2, 1, 4, 4}, 0.9)});
  options.shots = std::make_shared<nd::LabelledShots>(nd::LabelledShots{
      shots_x, torch::tensor({0, 0, 1, 1, 2, 2}, torch::kLong)});
  torch::Tensor adapted_flat;
  {
    TestNode node(builtin_expert(small_model()), options, coordinator->port());
    auto c = coordinator->wait_connection();
    REQUIRE(push(*c, 1, bytes, 4096, pr::sha256(bytes), nullptr, "dro") ==
            Code::kOk);
    v1::Envelope adapt;
    adapt.mutable_adapt_request()->set_round(1);
    auto reply = c->request_async(adapt, 30s).get();
    REQUIRE(reply.has_adapt_response());
    const auto& r = reply.adapt_response();
    CHECK_FALSE(r.has_embedding_mean());
    CHECK_FALSE(r.has_embedding_logvar());
    CHECK(r.shots() == 6);
    CHECK(r.shot_accuracy() == doctest::Approx(1.0));
    CHECK(reply.ByteSizeLong() < 40);  // A count and an accuracy.

    // The adapted model stays at the node: over its labels, 3 outputs, and
    // the one `chorus eval --model` and `predict --model` take.
    auto adapted = fu::load_fused_model(options.state_dir / "adapted.pt");
    CHECK(adapted.algorithm == "dro-adapted");
    CHECK(adapted.spec.num_classes == 3);
    auto task = fu::task_outputs(adapted);
    CHECK(task.names == kLabels);
    CHECK(task.classes == std::vector<std::int64_t>{0, 1, 2});
    CHECK_NOTHROW(fu::check_predicts_alone(adapted, "adapted.pt"));
    CHECK(code_of([&] { fu::check_predicts_alone(init, "dro.pt"); }) ==
          Code::kFailedPrecondition);
    adapted_flat = fu::flatten_model(*adapted.model);
  }  // The node says Goodbye.
  std::this_thread::sleep_for(200ms);
  auto frames = coordinator->received();
  coordinator.reset();
  // Frame inspection: no frame the node sent holds any 4 consecutive
  // weights of the adapted model (nor of its head).
  const auto* w = adapted_flat.data_ptr<float>();
  REQUIRE(adapted_flat.numel() > 8);
  std::size_t inspected = 0;
  for (const auto& f : frames) {
    const auto wire = f.SerializeAsString();
    for (std::int64_t k = 0; k + 4 <= adapted_flat.numel(); k += 4) {
      const std::string window(reinterpret_cast<const char*>(w + k),
                               4 * sizeof(float));
      CHECK_MESSAGE(wire.find(window) == std::string::npos,
                    "a frame holds adapted weights: " << f.DebugString());
    }
    ++inspected;
  }
  CHECK(inspected >= 5);  // Hello, push acks, AdaptResponse, Goodbye.
}

TEST_CASE(
    "node: shares its own weights only when its operator opted in, and "
    "audits every read") {
  chorus::testing::TempDir dir;
  v1::Envelope ask;
  ask.mutable_weights_request()->set_round(1);
  for (bool opted_in : {false, true}) {
    CAPTURE(opted_in);
    TestCoordinator coordinator;
    nd::ExpertOptions o;
    o.input_shape = kShape;
    o.labels = kLabels;
    o.spec = "mlp in=1x4x4 classes=3 hidden=8";
    o.share_weights = opted_in;
    auto model = small_model();
    nd::NodeServiceOptions options;
    options.state_dir = dir / (opted_in ? "in" : "out");
    options.audit_log = options.state_dir / "audit.jsonl";
    TestNode node(nd::make_builtin_expert(model, o), options,
                  coordinator.port());
    auto c = coordinator.wait_connection();
    CHECK(coordinator.hello().can("weights") == opted_in);
    std::string msg;
    if (!opted_in) {
      CHECK(code_of([&] { c->request_async(ask, 10s).get(); }, &msg) ==
            Code::kPermissionDenied);
      CHECK(contains(msg, "share_weights = false"));
    } else {
      auto reply = c->request_async(ask, 10s).get();
      REQUIRE(reply.has_weights_response());
      CHECK(reply.weights_response().spec() == o.spec);
      auto flat =
          chorus::testing::decode_tensor(reply.weights_response().parameters());
      CHECK(torch::equal(flat, fu::flatten_model(*model)));
    }
    auto summary = chorus::protocol::summarise_audit(options.audit_log);
    CHECK(summary.by_kind["weights"] == 1);
    CHECK(summary.by_outcome[opted_in ? "OK" : "PERMISSION_DENIED"] == 1);
  }
}
