#include "chorus/coordinator/status.hpp"

#include "chorus/core/metrics.hpp"

namespace chorus::coordinator {

StatusBoard::StatusBoard(std::string coordinator, std::string algorithm,
                         std::uint32_t rounds)
    : coordinator_(std::move(coordinator)),
      algorithm_(std::move(algorithm)),
      rounds_(rounds) {}

void StatusBoard::phase(std::uint32_t round, std::string phase) {
  std::lock_guard lock(mutex_);
  if (phase == "query") progress_.clear();
  if (progress::enabled()) {
    if (phase == "done" || phase == "serving") {
      node_bars_.clear();
      round_bar_.reset();
    } else {
      if (phase == "query" || round != round_) node_bars_.clear();
      if (!round_bar_ || round != round_) {
        round_bar_.reset();
        round_bar_ = std::make_unique<progress::Bar>(
            fmt::format("round {}/{}", round, rounds_), 0, "");
      }
      round_bar_->set_detail(fmt::format("{}: {}", algorithm_, phase));
    }
  }
  round_ = round;
  phase_ = std::move(phase);
  since_ = std::chrono::steady_clock::now();
}

void StatusBoard::asking(const std::string& node, std::int64_t inputs) {
  std::lock_guard lock(mutex_);
  progress_[node].asked += inputs;
  if (progress::enabled()) {
    auto& bar = node_bars_[node];
    if (!bar) {
      bar = std::make_unique<progress::Bar>(
          fmt::format("  {:<10}", node),
          static_cast<double>(progress_[node].asked), "inputs");
    } else {
      bar->set_total(static_cast<double>(progress_[node].asked));
    }
  }
}

void StatusBoard::answered(const std::string& node, std::int64_t inputs) {
  std::lock_guard lock(mutex_);
  progress_[node].answered += inputs;
  if (const auto bar = node_bars_.find(node); bar != node_bars_.end()) {
    bar->second->update(static_cast<double>(progress_[node].answered));
  }
}

void StatusBoard::left_out(const std::string& node, std::string reason) {
  std::lock_guard lock(mutex_);
  if (const auto bar = node_bars_.find(node); bar != node_bars_.end()) {
    bar->second->set_detail("left out: " + reason);
  }
  progress_[node].left_out = std::move(reason);
}

void StatusBoard::round_done(std::uint32_t round) {
  std::lock_guard lock(mutex_);
  rounds_done_ = std::max(rounds_done_, round);
  node_bars_.clear();
  round_bar_.reset();
}

protocol::CoordinatorStatus StatusBoard::snapshot(
    const std::vector<std::string>& roster,
    const std::map<std::string, std::chrono::steady_clock::time_point>&
        last_heard,
    const std::map<std::string, std::string>& refused) const {
  const auto now = std::chrono::steady_clock::now();
  auto total = [](const char* name, const std::string& node) {
    return static_cast<std::int64_t>(metrics::value(name, {{"node", node}}));
  };
  std::lock_guard lock(mutex_);
  protocol::CoordinatorStatus s{
      .coordinator = coordinator_,
      .algorithm = algorithm_,
      .round = round_,
      .rounds = rounds_,
      .rounds_done = rounds_done_,
      .phase = phase_,
      .phase_seconds = std::chrono::duration<double>(now - since_).count(),
      .nodes = {},
      .inputs = 0,
      .bytes_sent = 0,
      .bytes_received = 0};
  for (const auto& name : roster) {
    protocol::NodeStatus n{.name = name};
    const auto p = progress_.find(name);
    if (p != progress_.end()) {
      n.round_asked = p->second.asked;
      n.round_answered = p->second.answered;
      n.reason = p->second.left_out;
    }
    const auto heard = last_heard.find(name);
    if (heard != last_heard.end()) {
      n.last_heard_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            now - heard->second)
                            .count();
    }
    const auto why = refused.find(name);
    if (heard == last_heard.end() && why != refused.end()) {
      n.state = "refused";
      n.reason = why->second;
    } else if (!n.reason.empty()) {
      n.state = "left_out";
    } else if (heard == last_heard.end()) {
      n.state = "disconnected";
    } else if (phase_ == "query" && n.round_answered < n.round_asked) {
      n.state = "answering";
    } else {
      n.state = "connected";
    }
    n.inputs = total("chorus_coordinator_inputs_queried_total", name);
    n.bytes_sent = total("chorus_coordinator_sent_bytes_total", name);
    n.bytes_received = total("chorus_coordinator_received_bytes_total", name);
    s.inputs += n.inputs;
    s.bytes_sent += n.bytes_sent;
    s.bytes_received += n.bytes_received;
    s.nodes.push_back(std::move(n));
  }
  return s;
}

}  // namespace chorus::coordinator
