// dro's steps in a round: before the fit, the nodes that opted in send
// their own weights; after the push, every node that can adapts the pushed
// initialisation to its own task with its private shots (S SGD steps) and
// keeps the adapted weights; only how many shots it used and the adapted
// model's accuracy on them come back, for the round's report.
#include <torch/torch.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "after_round.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"
#include "chorus/protocol/eventual.hpp"
#include "chorus/protocol/tensor_codec.hpp"

namespace chorus::coordinator {
namespace {

class DroRound : public AfterRound {
 public:
  explicit DroRound(const RoundContext& context) : ctx_(context) {}

  // Nodes that opted in to sharing their weights ("weights" in their
  // Hello) send them; dro fuses them in place of those nodes' imitators.
  asio::awaitable<std::optional<Error>> before_fit(fusion::FusionData& data,
                                                   int round) override {
    std::vector<std::string> names;
    for (const auto& node : ctx_.registry.connected()) {
      if (!node.announced.can("weights")) continue;
      const bool fused =
          std::any_of(data.experts.begin(), data.experts.end(),
                      [&](const auto& e) { return e.name == node.identity; });
      if (fused) names.push_back(node.identity);
    }
    const protocol::WeightsCall call{.round =
                                         static_cast<std::uint32_t>(round)};
    auto weights = [call, deadline = ctx_.options.request_deadline](
                       NodeLink& l) { return l.weights(call, deadline); };
    auto replies = co_await ask_each<protocol::WeightsAnswer>(
        ctx_.registry, std::move(names), weights);
    for (auto& [id, reply] : replies) {
      try {
        if (reply.error) throw *reply.error;
        auto& r = reply.reply;
        (void)fusion::ModelSpec::parse(r.spec);  // named, if malformed
        auto flat = protocol::to_tensor(r.parameters).to(torch::kFloat32);
        CHORUS_CHECK_CODE(flat.dim() == 1 && !protocol::has_non_finite(flat),
                          Code::kDataLoss,
                          "node '{}' sent weights that are not a finite "
                          "vector",
                          id);
        data.shared_weights[id] = {r.spec, flat};
        log_->info(
            "round={} node={} event=weights_received spec=\"{}\" "
            "parameters={}",
            round, id, r.spec, flat.numel());
      } catch (const Error& e) {
        log_->warn("round={} node={} event=weights_failed error=\"{}\"", round,
                   id, describe(e));
      }
    }
    co_return std::nullopt;
  }

  asio::awaitable<std::optional<Error>> after_push(
      fusion::Fuser&, int round, RoundReport& report,
      const std::filesystem::path&) override {
    nlohmann::json saved = nlohmann::json::object();
    auto replies = co_await adapt_pushed(ctx_, round, report);
    for (const auto& [id, reply] : replies) {
      if (reply.error) {
        log_->warn("round={} node={} event=adapt_failed error=\"{}\"", round,
                   id, describe(*reply.error));
        continue;
      }
      const auto& r = reply.reply;
      if (!(r.shot_accuracy >= 0 && r.shot_accuracy <= 1)) {
        log_->warn(
            "round={} node={} event=adapt_failed error=\"a shot "
            "accuracy of {} is not in [0, 1]\"",
            round, id, r.shot_accuracy);
        continue;
      }
      report.adapted[id] = r.shot_accuracy;
      saved[id] = {{"shots", r.shots}, {"shot_accuracy", r.shot_accuracy}};
    }
    if (saved.empty()) co_return std::nullopt;
    log_->info("round={} event=nodes_adapted algorithm=dro nodes={}", round,
               saved.size());
    std::function<bool()> write =
        [file =
             ctx_.options.run_dir / fmt::format("adapted-round-{}.json", round),
         text = saved.dump(2) + "\n"] {
          write_file_atomic(file, text);
          return true;
        };
    co_return co_await ctx_.compute(std::move(write));
  }

 private:
  RoundContext ctx_;
  std::shared_ptr<spdlog::logger> log_ = log::get("coordinator");
};

}  // namespace

std::unique_ptr<AfterRound> make_dro_round(const RoundContext& context) {
  return std::make_unique<DroRound>(context);
}

}  // namespace chorus::coordinator
