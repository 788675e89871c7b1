// dro's steps in a round: every node that can adapts the pushed
// initialisation to its own task with its private shots (S SGD steps) and
// keeps the adapted weights; only how many shots it used and the adapted
// model's accuracy on them come back, for the round's report.
#include <nlohmann/json.hpp>

#include "after_round.hpp"
#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/core/log.hpp"

namespace chorus::coordinator {
namespace {

class DroRound : public AfterRound {
 public:
  explicit DroRound(const RoundContext& context) : ctx_(context) {}

  void after_push(fusion::Fuser&, int round, RoundReport& report,
                  const std::filesystem::path&) override {
    nlohmann::json saved = nlohmann::json::object();
    for (const auto& [id, reply] : adapt_pushed(ctx_, round, report)) {
      if (reply.error) {
        log_->warn("round={} node={} event=adapt_failed error=\"{}\"", round,
                   id, describe(*reply.error));
        continue;
      }
      const auto& r = reply.reply;
      if (!(r.shot_accuracy >= 0 && r.shot_accuracy <= 1)) {
        log_->warn("round={} node={} event=adapt_failed error=\"a shot "
                   "accuracy of {} is not in [0, 1]\"",
                   round, id, r.shot_accuracy);
        continue;
      }
      report.adapted[id] = r.shot_accuracy;
      saved[id] = {{"shots", r.shots}, {"shot_accuracy", r.shot_accuracy}};
    }
    if (saved.empty()) return;
    write_file_atomic(
        ctx_.options.run_dir / fmt::format("adapted-round-{}.json", round),
        saved.dump(2) + "\n");
    log_->info("round={} event=nodes_adapted algorithm=dro nodes={}", round,
               saved.size());
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
