// tae's steps in a round: every node that can adapts the pushed global
// model to its own task with its private shots and sends back only its
// prototype embedding; the coordinator keeps one per task and refits the
// prior p_γ on all of them, before every later push too.
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "after_round.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/protocol/tensor_codec.hpp"

namespace chorus::coordinator {
namespace {

namespace fs = std::filesystem;

class TaeRound : public AfterRound {
 public:
  explicit TaeRound(const RoundContext& context) : ctx_(context) {}

  void resume() override { load_embeddings(); }

  void before_push(fusion::Fuser& fuser, int round) override {
    if (auto* tae = fusion::tae_model(fuser);
        tae && refit_on_embeddings(*tae)) {
      log->info("round={} event=prior_refit tasks={}", round,
                task_embeddings.size());
    }
  }

  asio::awaitable<std::optional<Error>> after_push(
      fusion::Fuser& fuser, int round, RoundReport& report,
      const fs::path& model_file) override {
    auto* tae = fusion::tae_model(fuser);
    if (tae == nullptr) co_return std::nullopt;
    auto replies = co_await adapt_pushed(ctx_, round, report);
    // The prior's refit and the files: off the network thread.
    std::function<bool()> aggregate = [this, tae, round, &report, &replies,
                                       model_file] {
      aggregate_embeddings(*tae, round, report, replies, model_file);
      return true;
    };
    co_return co_await ctx_.compute(std::move(aggregate));
  }

 private:
  // tae: the prototype embeddings the nodes sent, one per task (the task's
  // classes, comma-separated → the newest embedding and who sent it). Every
  // round's freshly trained model has p_γ refit on all of them before it is
  // pushed, so what earlier rounds learnt about the tasks is not lost.
  struct TaskEmbedding {
    std::vector<std::int64_t> classes;
    fusion::WDistribution q;
    std::string node;
    int round = 0;
  };
  std::map<std::string, TaskEmbedding> task_embeddings;

  fs::path embeddings_file() const {
    return ctx_.options.run_dir / "checkpoints" / "embeddings.json";
  }

  void save_embeddings() const {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [key, e] : task_embeddings) {
      out[key] = {{"classes", e.classes},
                  {"node", e.node},
                  {"round", e.round},
                  {"mean", fusion::to_doubles(e.q.mean)},
                  {"logvar", fusion::to_doubles(e.q.logvar)}};
    }
    write_file_atomic(embeddings_file(), out.dump(2) + "\n");
  }

  // Reads the embeddings a previous run kept (--resume).
  void load_embeddings() {
    std::error_code ec;
    if (!fs::is_regular_file(embeddings_file(), ec)) return;
    try {
      auto in = nlohmann::json::parse(read_file(embeddings_file()));
      for (const auto& [key, e] : in.items()) {
        TaskEmbedding t;
        t.classes = e.at("classes").get<std::vector<std::int64_t>>();
        t.node = e.at("node").get<std::string>();
        t.round = e.at("round").get<int>();
        auto mean = e.at("mean").get<std::vector<double>>();
        auto logvar = e.at("logvar").get<std::vector<double>>();
        CHORUS_CHECK_CODE(mean.size() == logvar.size() && !mean.empty(),
                          Code::kDataLoss,
                          "task {}: mean and log-variance differ in size", key);
        t.q = {torch::tensor(mean, torch::kFloat32),
               torch::tensor(logvar, torch::kFloat32)};
        task_embeddings[key] = std::move(t);
      }
    } catch (const nlohmann::json::exception& e) {
      fail(Code::kDataLoss, "{}: {}", embeddings_file().string(), e.what());
    }
    log->info("event=embeddings_loaded tasks={}", task_embeddings.size());
  }

  // Refits tae's p_γ on every task embedding kept so far; false when there
  // are none (or none fits this model).
  bool refit_on_embeddings(fusion::TaeModel& tae) {
    std::vector<torch::Tensor> tasks;
    std::vector<fusion::WDistribution> embeddings;
    for (const auto& [key, e] : task_embeddings) {
      if (e.q.mean.numel() != tae.options().network().w_dim()) {
        log->warn("event=embedding_skipped task={} reason=\"|w| {} != {}\"",
                  key, e.q.mean.numel(), tae.options().network().w_dim());
        continue;
      }
      tasks.push_back(fusion::task_descriptor(e.classes, tae.task_dim()));
      embeddings.push_back(e.q);
    }
    if (embeddings.empty()) return false;
    tae.refit_prior(tasks, embeddings);
    return true;
  }

  // tae: every node that can adapts the pushed model to its own task with
  // its private shots and returns only its prototype embedding; they are
  // kept (one per task, the newest), p_γ is refit on all of them and the
  // round's model saved again; the next round's model is refit on them
  // before it is pushed.
  void aggregate_embeddings(fusion::TaeModel& tae, int round,
                            RoundReport& report,
                            const NodeReplies<protocol::AdaptAnswer>& replies,
                            const fs::path& model_file) {
    std::size_t received = 0;
    nlohmann::json saved = nlohmann::json::object();
    for (const auto& [id, reply] : replies) {
      try {
        if (reply.error) throw *reply.error;
        const auto& r = reply.reply;
        fusion::WDistribution q{protocol::to_tensor(r.embedding_mean),
                                protocol::to_tensor(r.embedding_logvar)};
        CHORUS_CHECK_CODE(
            q.mean.numel() == tae.options().network().w_dim() &&
                q.logvar.numel() == tae.options().network().w_dim() &&
                !protocol::has_non_finite(q.mean) &&
                !protocol::has_non_finite(q.logvar),
            Code::kDataLoss, "node '{}' sent a malformed embedding", id);
        auto classes = ctx_.labels.at(id);
        std::sort(classes.begin(), classes.end());
        task_embeddings[fmt::format("{}", fmt::join(classes, ","))] = {
            classes,
            {q.mean.to(torch::kFloat32), q.logvar.to(torch::kFloat32)},
            id,
            round};
        ++received;
        report.adapted[id] = r.bound;
        saved[id] = {{"mean", fusion::to_doubles(q.mean)},
                     {"logvar", fusion::to_doubles(q.logvar)},
                     {"shots", r.shots},
                     {"bound", r.bound}};
      } catch (const Error& e) {
        log->warn("round={} node={} event=adapt_failed error=\"{}\"", round, id,
                  describe(e));
      }
    }
    if (received == 0) return;
    save_embeddings();
    refit_on_embeddings(tae);
    tae.save(model_file);
    write_file_atomic(ctx_.options.run_dir / "fused.pt", read_file(model_file));
    write_file_atomic(
        ctx_.options.run_dir / fmt::format("embeddings-round-{}.json", round),
        saved.dump(2) + "\n");
    log->info("round={} event=embeddings_aggregated nodes={} tasks={}", round,
              received, task_embeddings.size());
  }

  RoundContext ctx_;
  std::shared_ptr<spdlog::logger> log = log::get("coordinator");
};

}  // namespace

std::unique_ptr<AfterRound> make_tae_round(const RoundContext& context) {
  return std::make_unique<TaeRound>(context);
}

}  // namespace chorus::coordinator
