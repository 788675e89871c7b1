#include "chorus/coordinator/coordinator.hpp"

#include <fmt/ostream.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "after_round.hpp"
#include "answer_store.hpp"
#include "broadcast.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/core/metrics.hpp"
#include "chorus/fusion/data_files.hpp"
#include "chorus/fusion/frugal.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/robust.hpp"
#include "chorus/protocol/eventual.hpp"
#include "chorus/protocol/offload.hpp"
#include "chorus/protocol/tensor_codec.hpp"
#include "fan_out.hpp"
#include "run_log.hpp"

namespace chorus::coordinator {
namespace {

// A finished round's metrics (docs/observability.md).
void publish_round(const RoundReport& r) {
  metrics::count("chorus_coordinator_rounds_completed_total",
                 "Rounds fused (and pushed) to the end");
  const std::pair<const char*, double> phases[] = {{"quorum", r.phases.quorum},
                                                   {"query", r.phases.query},
                                                   {"fit", r.phases.fit},
                                                   {"push", r.phases.push},
                                                   {"adapt", r.phases.adapt}};
  for (const auto& [phase, seconds] : phases) {
    metrics::set("chorus_coordinator_round_phase_seconds",
                 "Where the last round's time went, by phase",
                 {{"phase", phase}}, seconds);
  }
  for (const auto& [node, why] : r.failed) {
    metrics::count("chorus_coordinator_nodes_left_out_total",
                   "Times a node was left out of a round's fusion",
                   {{"node", node}});
  }
  for (const auto& node : r.pushed_to) {
    metrics::count("chorus_coordinator_model_pushes_total",
                   "Fused models pushed to a node, by node", {{"node", node}});
  }
}

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

// Where the answers are checkpointed; the run directory must be named.
std::filesystem::path answers_dir(const CoordinatorOptions& o) {
  CHORUS_CHECK(!o.run_dir.empty(), "the coordinator needs a run directory");
  return o.run_dir / "checkpoints" / "answers";
}

}  // namespace

struct Coordinator::Impl {
  NodeRegistry& registry;
  PoolData pool;
  CoordinatorOptions options;
  std::shared_ptr<spdlog::logger> log = log::get("coordinator");

  // The answers collected, checkpointed under the run directory.
  AnswerStore store;
  // metrics.jsonl and the rounds' manifests.
  RunLog run_log{options.run_dir, options.rounds};

  std::unique_ptr<fusion::Fuser> fuser;
  std::vector<fusion::ExpertInfo> experts;
  fusion::FusionData last_data;
  std::unique_ptr<RemoteOracle> oracle;
  int fused_round = 0;
  fusion::QueryStats stats;

  // The algorithm's own steps around the push (tae: adaptation, prior).
  std::unique_ptr<AfterRound> after_round;

  Impl(NodeRegistry& r, PoolData p, CoordinatorOptions o)
      : registry(r),
        pool(std::move(p)),
        options(std::move(o)),
        store(answers_dir(options)),
        after_round(make_after_round(
            options.algorithm,
            RoundContext{.registry = registry,
                         .options = options,
                         .labels = store.labels(),
                         .compute = [this](std::function<bool()> work) {
                           return on_pool(compute, std::move(work));
                         }})) {}

  std::int64_t n() const { return pool.inputs.size(0); }
  std::int64_t slice_begin(int s) const { return n() * s / options.rounds; }
  std::int64_t slice_end(int s) const { return n() * (s + 1) / options.rounds; }

  std::vector<std::int64_t> to_indices(
      const std::vector<std::string>& names) const {
    std::vector<std::int64_t> out;
    for (const auto& l : names) {
      out.push_back(options.task.labels.index(l, "a node's label"));
    }
    return out;
  }

  // Blocking file work (checkpoints) runs here, off the network thread.
  asio::thread_pool writer{1};
  // The round's computation (the fit, saving models, an algorithm's own
  // steps) runs here, off the network thread.
  asio::thread_pool compute{1};

  // Runs `work` on `pool` and waits for it without blocking the loop.
  static asio::awaitable<std::optional<Error>> on_pool(
      asio::thread_pool& pool, std::function<bool()> work) {
    using Call = protocol::PoolCall<bool>;
    auto call = std::make_shared<Call>(co_await asio::this_coro::executor);
    call->work = std::move(work);
    auto finished = protocol::start_on_pool(pool, call);
    co_await std::move(finished);
    co_return std::move(call->result.error);
  }
  asio::awaitable<std::optional<Error>> off_loop(std::function<bool()> work) {
    return on_pool(writer, std::move(work));
  }

  // One request's answers to part of a slice: kept, and checkpointed before
  // the next request's are taken.
  asio::awaitable<std::optional<Error>> keep_part(
      fs::path file, torch::Tensor part, torch::Tensor task,
      std::vector<torch::Tensor>& parts, std::vector<fs::path>& files) {
    parts.push_back(part);
    files.push_back(file);
    std::function<bool()> write = [file, part, task] {
      AnswerStore::write(file, part, task);
      return true;
    };
    co_return co_await off_loop(std::move(write));
  }

  // Asks `node` for every slice < round it has not answered; stores and
  // checkpoints each (a coroutine on the registry's strand, which owns the
  // answer maps while the round's thread waits for the fan-out).
  asio::awaitable<Asked> collect(RemoteExpert node, int round,
                                 RemoteOracleOptions ro) {
    Asked total;
    const std::string name = node.info.name;
    const auto task = torch::tensor(store.labels().at(name), torch::kLong);
    for (int s = 0; s < round; ++s) {
      if (store.has(name, s)) continue;
      // Requests answered before a crash, contiguous from the slice's start.
      auto [parts, part_files, offset] = store.resumed(name, s, slice_begin(s));
      if (offset > slice_begin(s)) {
        log->info(
            "node={} slice={} event=resumed_slice answered={} remaining={}",
            name, s, offset - slice_begin(s), slice_end(s) - offset);
      }
      if (offset < slice_end(s)) {
        const auto first = offset;
        if (options.status) options.status->asking(name, slice_end(s) - offset);
        AnswerSink sink = [this, &parts, &part_files, name, s, first, task](
                              std::int64_t row, torch::Tensor part) {
          if (options.status) options.status->answered(name, part.size(0));
          return keep_part(store.part_file(name, s, first + row),
                           std::move(part), task, parts, part_files);
        };
        auto asked =
            co_await ask_node(node, pool.inputs.slice(0, offset, slice_end(s)),
                              ro, std::move(sink));
        total.stats += asked.stats;
        if (asked.error) {
          total.error = std::move(asked.error);
          co_return total;
        }
      }
      auto a = torch::cat(parts);
      std::function<bool()> merge = [file = store.slice_file(name, s), a, task,
                                     files = part_files] {
        AnswerStore::write(file, a, task);
        std::error_code ec;
        for (const auto& f : files) fs::remove(f, ec);
        return true;
      };
      if (auto failed = co_await off_loop(std::move(merge))) {
        total.error = std::move(failed);
        co_return total;
      }
      store.complete(name, s, a);
    }
    co_return total;
  }

  // Tells `chorus status` where round `round` is.
  void enter(int round, const char* phase) const {
    if (options.status) {
      options.status->phase(static_cast<std::uint32_t>(round), phase);
    }
  }

  // The round's cancellation point between phases.
  std::optional<Error> stopped(int round, const char* before) const {
    if (!options.stop.stop_requested()) return std::nullopt;
    return Error(Code::kCancelled,
                 fmt::format("round {} interrupted before {}", round, before));
  }

  // One round, a coroutine on the registry's strand: quorum → every node
  // asked for the slices it has not answered (checkpointed as they come) →
  // the algorithm's steps before the fit → the fit (on the compute thread)
  // → push → the algorithm's steps after it → metrics and manifest. Errors
  // travel as values; Ctrl-C (`options.stop`) cancels at the next step.
  asio::awaitable<protocol::Outcome<RoundReport>> round(int round) {
    protocol::Outcome<RoundReport> out;
    const auto t0 = Clock::now();
    RoundReport& report = out.reply;
    report.round = round;
    report.rounds = options.rounds;
    auto since = [](Clock::time_point& t) {
      const auto now = Clock::now();
      const double s = std::chrono::duration<double>(now - t).count();
      t = now;
      return s;
    };
    auto mark = t0;
    enter(round, "quorum");
    auto quorum =
        co_await registry.quorum(options.min_nodes, options.quorum_timeout,
                                 options.settle, options.stop);
    report.phases.quorum = since(mark);
    if (quorum.error) {
      out.error = std::move(quorum.error);
      co_return out;
    }
    metrics::count("chorus_coordinator_rounds_started_total",
                   "Rounds started (a quorum of nodes was reached)");
    metrics::set("chorus_coordinator_round", "The round in progress or done",
                 {}, round);
    std::vector<RemoteExpert> remote;
    RemoteOracleOptions ro{.round = static_cast<std::uint32_t>(round),
                           .deadline = options.request_deadline,
                           .batch = options.query_batch};
    // Inputs travel in the task's form (uint8 pixels: a quarter of float32).
    ro.task = options.task;
    ro.stop = options.stop;
    ro.inflight = std::make_shared<InflightBudget>(options.max_inflight_bytes);
    auto present = protocol::run_caught([&] {
      for (const auto& node : quorum.reply) {
        auto l = to_indices(node.announced.expert.labels);
        store.set_labels(node.identity, l);
        remote.push_back(RemoteExpert{
            .info = {.name = node.identity, .labels = l},
            .max_batch = static_cast<std::int64_t>(
                std::max<std::uint64_t>(1, node.announced.policy.max_batch)),
            .link = registry.link(node.identity)});
      }
      return true;
    });
    if (present.error) {
      out.error = std::move(present.error);
      co_return out;
    }

    enter(round, "query");
    // Fan out: every node at once, for the slices it has not answered.
    std::vector<asio::awaitable<Asked>> works;
    for (const auto& node : remote) works.push_back(collect(node, round, ro));
    auto asked = co_await protocol::all_of(std::move(works));
    report.phases.query = since(mark);
    std::vector<RemoteExpert> fused_experts;
    fusion::QueryStats s;
    for (std::size_t k = 0; k < remote.size(); ++k) {
      const auto& name = remote[k].info.name;
      report.per_node[name] = asked[k].stats;
      s += asked[k].stats;
      if (!asked[k].error) {
        fused_experts.push_back(remote[k]);
      } else {
        const auto error = describe(*asked[k].error);
        report.failed[name] = error;
        if (options.status) options.status->left_out(name, error);
        log->warn("round={} node={} event=left_out error=\"{}\"", round, name,
                  error);
      }
    }
    // A cancelled fan-out leaves every node looking failed: say why.
    if (auto e =
            stopped(round, "fusing (the answers received are checkpointed)")) {
      out.error = std::move(e);
      co_return out;
    }
    report.inputs_queried = s.inputs;
    report.bytes_sent = s.bytes_sent;
    report.bytes_received = s.bytes_received;
    stats += s;
    // The quorum's own count: min_nodes, or the roster the round began with.
    const auto needed = quorum_needed(options.min_nodes, quorum.reply.size());
    if (fused_experts.size() < needed) {
      out.error = Error(
          Code::kUnavailable,
          fmt::format("round {}: only {} node(s) answered, {} needed ({})",
                      round, fused_experts.size(), needed,
                      fmt::join(report.failed, "; ")));
      co_return out;
    }

    // Fuse on U's slices 1..round.
    fusion::FusionData data;
    auto gathered = protocol::run_caught([&] {
      const auto end = slice_end(round - 1);
      data.num_classes = options.task.labels.size();
      data.label_names = options.task.labels.names();
      data.transfer = pool.inputs.slice(0, 0, end);
      for (const auto& e : fused_experts) {
        std::vector<torch::Tensor> parts;
        for (int sl = 0; sl < round; ++sl)
          parts.push_back(store.answers(e.info.name, sl));
        data.answers.push_back(torch::cat(parts));
        data.experts.push_back(e.info);
        report.experts.push_back(e.info.name);
      }
      if (pool.fusion_index.defined() && pool.fusion_index.numel() > 0) {
        auto keep = pool.fusion_index.lt(end).nonzero().flatten();
        data.fusion_index = pool.fusion_index.index_select(0, keep);
        data.fusion_labels = pool.fusion_labels.index_select(0, keep);
      }
      report.pool_size = end;
      return true;
    });
    if (gathered.error) {
      out.error = std::move(gathered.error);
      co_return out;
    }
    if (auto e = co_await after_round->before_fit(data, round)) {
      out.error = std::move(e);
      co_return out;
    }

    enter(round, "fit");
    // The fit, the algorithm's steps before the push, and the model saved:
    // on the compute thread while the loop keeps serving the connections.
    const auto model_file =
        options.run_dir / fmt::format("fused-round-{}.pt", round);
    std::string bytes;
    std::function<bool()> fit = [this, &data, &bytes, &model_file,
                                 &fused_experts, &report, ro, round] {
      auto algorithm_options = options.algorithm_options;
      algorithm_options.stop(options.stop);
      // The fit says how it is going: the last epoch of each stage, and one
      // line every few seconds in between.
      auto last = std::make_shared<Clock::time_point>(Clock::now());
      algorithm_options.on_progress([log = log, round, last](
                                        const std::string& stage,
                                        const fusion::EpochReport& e) {
        const auto now = Clock::now();
        if (e.epoch < e.epochs && now - *last < std::chrono::seconds(5)) return;
        *last = now;
        log->info(
            "round={} event=fit_progress stage={} epoch={}/{} loss={:.4f}{} "
            "epoch_seconds={:.2f}",
            round, stage, e.epoch, e.epochs, e.train_loss,
            e.val_accuracy ? fmt::format(" held_out={:.4f}", *e.val_accuracy)
                           : std::string(),
            e.seconds);
      });
      fuser = fusion::make_fuser(options.algorithm, algorithm_options);
      fuser->fit(data);
      // Robust fusion's verdicts: a node whose answers were left out is
      // reported as left out, with the reason.
      for (const auto& v : fusion::expert_verdicts(*fuser)) {
        if (v.trusted) continue;
        report.failed[v.name] = "answers not trusted: " + v.reason;
        if (options.status) {
          options.status->left_out(v.name, report.failed[v.name]);
        }
        std::erase(report.experts, v.name);
      }
      experts = data.experts;
      last_data = data;
      oracle = std::make_unique<RemoteOracle>(data.num_classes, fused_experts,
                                              registry.executor(), ro);
      fused_round = round;
      after_round->before_push(*fuser, round);
      if (auto e = stopped(round, "saving and pushing the fused model"))
        throw *e;
      if (!fuser->save(model_file)) return false;
      bytes = read_file(model_file);
      write_file_atomic(options.run_dir / "fused.pt", bytes);
      return true;
    };
    if (auto e = co_await on_pool(compute, std::move(fit))) {
      out.error = std::move(e);
      co_return out;
    }
    report.phases.fit = since(mark);
    if (!bytes.empty()) {
      report.fused_model = model_file;
      enter(round, "push");
      PushedModel pushed{
          .round = round, .algorithm = fuser->name(), .spec = fuser->spec()};
      report.pushed_to =
          co_await push_model(registry, bytes, std::move(pushed),
                              options.push_chunk, options.request_deadline);
      report.phases.push = since(mark);
      enter(round, "adapt");
      if (auto e = co_await after_round->after_push(*fuser, round, report,
                                                    model_file)) {
        out.error = std::move(e);
        co_return out;
      }
    }
    if (!bytes.empty()) report.phases.adapt = since(mark);
    report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();

    std::function<bool()> record = [this, &report] {
      run_log.record(report, options.algorithm);
      return true;
    };
    if (auto e = co_await off_loop(std::move(record))) {
      out.error = std::move(e);
      co_return out;
    }
    publish_round(report);
    if (options.status) {
      options.status->round_done(static_cast<std::uint32_t>(round));
    }
    log->info("round={} event=done experts={} queried={} seconds={:.1f}", round,
              report.experts.size(), report.inputs_queried, report.seconds);
    co_return out;
  }

  // Rounds first..options.rounds, one after the other; each report is
  // handed to `on_round` as it completes.
  asio::awaitable<protocol::Outcome<std::vector<RoundReport>>> rounds(
      int first, std::vector<RoundReport> reports) {
    protocol::Outcome<std::vector<RoundReport>> out;
    out.reply = std::move(reports);
    for (int r = first; r <= options.rounds; ++r) {
      auto done = co_await round(r);
      if (done.error) {
        out.error = std::move(done.error);
        co_return out;
      }
      out.reply.push_back(std::move(done.reply));
      if (options.on_round) options.on_round(out.reply.back());
    }
    co_return out;
  }
};

Coordinator::Coordinator(NodeRegistry& registry, PoolData pool,
                         CoordinatorOptions options)
    : impl_(std::make_unique<Impl>(registry, std::move(pool),
                                   std::move(options))) {
  auto& o = impl_->options;
  CHORUS_CHECK(!o.task.labels.empty(), "the coordinator needs a label space");
  CHORUS_CHECK(o.rounds >= 1, "rounds must be at least 1, got {}", o.rounds);
  CHORUS_CHECK(
      impl_->pool.inputs.defined() && impl_->pool.inputs.size(0) >= o.rounds,
      "the transfer pool needs at least one input per round");
  CHORUS_CHECK(!o.run_dir.empty(), "the coordinator needs a run directory");
  (void)fusion::make_fuser(o.algorithm,
                           o.algorithm_options);  // Names it early.
}

Coordinator::~Coordinator() = default;

std::vector<RoundReport> Coordinator::run() {
  auto& o = impl_->options;
  int first = 1;
  std::vector<RoundReport> reports;
  if (o.resume) {
    impl_->store.load();
    const int last = impl_->run_log.last_complete_round();
    impl_->after_round->resume();
    for (int r = 1; r <= last && r < o.rounds; ++r) {
      RoundReport done;
      done.round = r;
      done.rounds = o.rounds;
      done.resumed = true;
      reports.push_back(done);
      if (o.on_round) o.on_round(done);
    }
    // The last complete round is fused again (without new queries) when
    // every round is done, so that its model is at hand.
    first = std::min(last + 1, o.rounds);
    impl_->log->info("event=resume last_complete_round={} next_round={}", last,
                     first);
  } else {
    impl_->run_log.start_fresh();
  }
  // The one place the caller's thread waits for the rounds' coroutine.
  auto done = run_blocking(impl_->registry.executor(),
                           impl_->rounds(first, std::move(reports)));
  if (done.error) throw *done.error;
  return std::move(done.reply);
}

fusion::Fuser& Coordinator::fuser() {
  CHORUS_CHECK_CODE(impl_->fuser != nullptr, Code::kFailedPrecondition,
                    "no round has run yet");
  return *impl_->fuser;
}

const std::vector<fusion::ExpertInfo>& Coordinator::experts() const {
  return impl_->experts;
}

const fusion::FusionData& Coordinator::data() const { return impl_->last_data; }

RemoteOracle& Coordinator::oracle() {
  CHORUS_CHECK_CODE(impl_->oracle != nullptr, Code::kFailedPrecondition,
                    "no round has run yet");
  return *impl_->oracle;
}

fusion::QueryStats Coordinator::collection_stats() const {
  return impl_->stats;
}

std::string describe_phases(const RoundReport& report) {
  const auto& p = report.phases;
  auto out = fmt::format(
      "quorum {:.1f} s, query {:.1f} s, fit {:.1f} s, push "
      "{:.1f} s",
      p.quorum, p.query, p.fit, p.push);
  if (p.adapt >= 0.05) out += fmt::format(", adapt {:.1f} s", p.adapt);
  return out;
}

std::string describe_left_out(const RoundReport& report) {
  if (report.failed.empty()) return "0 left out";
  std::vector<std::string> why;
  for (const auto& [node, error] : report.failed)
    why.push_back(node + ": " + error);
  return fmt::format("{} left out ({})", report.failed.size(),
                     fmt::join(why, "; "));
}

FusedPrediction Coordinator::predict(const torch::Tensor& inputs) {
  auto& fuser = this->fuser();
  auto& oracle = this->oracle();
  const auto& pool = impl_->pool.inputs;
  const auto expected = pool.sizes().slice(1);
  CHORUS_CHECK(inputs.dim() == pool.dim() && inputs.size(0) >= 1 &&
                   inputs.sizes().slice(1) == expected,
               "inputs must be [N, {}] with N >= 1, got {}",
               fmt::join(expected, ", "),
               fmt::format("{}", fmt::streamed(inputs.sizes())));
  CHORUS_CHECK(inputs.scalar_type() == torch::kFloat32,
               "inputs must be float32, got {}",
               c10::toString(inputs.scalar_type()));
  CHORUS_CHECK(!protocol::has_non_finite(inputs),
               "inputs hold NaN or infinite values");
  // Nodes account these queries to the round after the last one.
  oracle.set_round(static_cast<std::uint32_t>(impl_->options.rounds + 1));
  const auto before = oracle.total_stats().inputs;
  std::vector<std::int64_t> before_each;
  for (std::int64_t i = 0; i < oracle.num_experts(); ++i)
    before_each.push_back(oracle.stats(i).inputs);
  FusedPrediction out;
  out.round = impl_->fused_round;
  if (!fuser.needs_experts()) {
    out.probabilities = fuser.predict(oracle, inputs);
    return out;
  }
  // Experts that are not connected are answered for as uninformative, and
  // named: a degraded answer beats none. A node that drops out while it is
  // being asked is found on a second try.
  const auto& experts = oracle.experts();
  for (int attempt = 0;; ++attempt) {
    std::vector<bool> away(experts.size());
    out.experts_away.clear();
    for (std::size_t i = 0; i < experts.size(); ++i) {
      away[i] = !impl_->registry.is_connected(experts[i].name);
      if (away[i]) out.experts_away.push_back(experts[i].name);
    }
    CHORUS_CHECK_CODE(out.experts_away.size() < experts.size(),
                      Code::kUnavailable,
                      "none of the fused model's experts is connected ({})",
                      fmt::join(out.experts_away, ", "));
    try {
      // With nobody away it passes every query through (query_all too).
      fusion::MaskedOracle masked(oracle, away);
      out.probabilities = fuser.predict(masked, inputs);
      break;
    } catch (const Error& e) {
      const bool link_failed =
          e.code() == Code::kUnavailable || e.code() == Code::kDeadlineExceeded;
      if (!link_failed || attempt > 0) throw;
      impl_->log->warn("event=predict_retry reason=\"{}\"", e.what());
    }
  }
  out.expert_queries = oracle.total_stats().inputs - before;
  const auto& costs = impl_->options.algorithm_options.frugal().costs_by_name();
  for (std::int64_t i = 0; i < oracle.num_experts(); ++i) {
    out.expert_cost +=
        static_cast<double>(oracle.stats(i).inputs -
                            before_each[static_cast<std::size_t>(i)]) *
        fusion::expert_cost(costs, experts[static_cast<std::size_t>(i)].name);
  }
  return out;
}

protocol::PredictAnswer Coordinator::answer(const protocol::PredictCall& call) {
  auto raw = protocol::to_tensor(call.inputs);
  CHORUS_CHECK(raw.scalar_type() == torch::kFloat32 ||
                   raw.scalar_type() == torch::kUInt8,
               "inputs must be uint8 or float32, got {}",
               c10::toString(raw.scalar_type()));
  // predict() refuses NaN and infinities in what they become.
  auto prediction = predict(fusion::to_model_inputs(raw, impl_->options.task));
  protocol::PredictAnswer out;
  out.outputs = protocol::to_blob(prediction.probabilities.to(torch::kFloat32));
  out.form = protocol::OutputForm::kProbabilities;
  out.labels = impl_->options.task.labels.names();
  out.algorithm = impl_->options.algorithm;
  out.fused_round = static_cast<std::uint32_t>(prediction.round);
  out.expert_queries = static_cast<std::uint64_t>(prediction.expert_queries);
  out.expert_cost = prediction.expert_cost;
  out.experts_away = prediction.experts_away;
  return out;
}

}  // namespace chorus::coordinator
