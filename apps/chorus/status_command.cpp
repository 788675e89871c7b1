// chorus status --coordinator HOST:PORT [--pki DIR] [--identity NAME]
//               [--json] [--watch SECONDS]
#include "status_command.hpp"

#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "chorus/coordinator/predict.hpp"
#include "chorus/core/error.hpp"
#include "host_port.hpp"

namespace chorus::app {
namespace {

struct StatusArgs {
  std::string coordinator, pki = "pki", identity = "operator";
  bool json = false;
  double watch_s = 0;
  double deadline_s = 10;
};

std::string bytes(std::int64_t n) {
  if (n < 10'000) return fmt::format("{} B", n);
  if (n < 10'000'000) return fmt::format("{:.1f} kB", n / 1e3);
  if (n < 10'000'000'000) return fmt::format("{:.1f} MB", n / 1e6);
  return fmt::format("{:.1f} GB", n / 1e9);
}

std::string heard(std::int64_t ms) {
  if (ms < 0) return "-";
  return ms < 60'000 ? fmt::format("{:.1f} s ago", ms / 1e3)
                     : fmt::format("{} min ago", ms / 60'000);
}

void print(const protocol::CoordinatorStatus& s, const std::string& where) {
  fmt::print("coordinator  {} at {}\n", s.coordinator, where);
  fmt::print("algorithm    {}\n", s.algorithm);
  if (s.phase == "done" || s.phase == "serving") {
    fmt::print("rounds       {} of {} done; {} for {:.0f} s\n", s.rounds_done,
               s.rounds,
               s.phase == "serving" ? "serving fused predictions" : "finished",
               s.phase_seconds);
  } else {
    fmt::print("round        {} of {} ({} done): {} for {:.1f} s\n", s.round,
               s.rounds, s.rounds_done,
               s.phase == "quorum" ? "waiting for the quorum" : s.phase,
               s.phase_seconds);
  }
  fmt::print("answered     {} inputs; {} sent, {} received\n\n", s.inputs,
             bytes(s.bytes_sent), bytes(s.bytes_received));
  fmt::print("{:<16} {:<13} {:>19} {:>13} {:>9} {:>10} {:>10}\n", "node",
             "state", "this round", "last heard", "inputs", "sent", "received");
  for (const auto& n : s.nodes) {
    const auto round =
        n.round_asked > 0
            ? fmt::format("{}/{} ({:.0f}%)", n.round_answered, n.round_asked,
                          100.0 * static_cast<double>(n.round_answered) /
                              static_cast<double>(n.round_asked))
            : std::string("-");
    fmt::print("{:<16} {:<13} {:>19} {:>13} {:>9} {:>10} {:>10}\n", n.name,
               n.state, round, heard(n.last_heard_ms), n.inputs,
               bytes(n.bytes_sent), bytes(n.bytes_received));
    if (!n.reason.empty()) {
      fmt::print("  {}: {}\n", n.state == "refused" ? "refused" : "left out",
                 n.reason);
    }
  }
}

nlohmann::json to_json(const protocol::CoordinatorStatus& s) {
  nlohmann::json nodes = nlohmann::json::array();
  for (const auto& n : s.nodes) {
    nodes.push_back({{"name", n.name},
                     {"state", n.state},
                     {"reason", n.reason},
                     {"last_heard_ms", n.last_heard_ms},
                     {"round_asked", n.round_asked},
                     {"round_answered", n.round_answered},
                     {"inputs", n.inputs},
                     {"bytes_sent", n.bytes_sent},
                     {"bytes_received", n.bytes_received}});
  }
  return {{"coordinator", s.coordinator},
          {"algorithm", s.algorithm},
          {"round", s.round},
          {"rounds", s.rounds},
          {"rounds_done", s.rounds_done},
          {"phase", s.phase},
          {"phase_seconds", s.phase_seconds},
          {"inputs", s.inputs},
          {"bytes_sent", s.bytes_sent},
          {"bytes_received", s.bytes_received},
          {"nodes", nodes}};
}

int run_status(const StatusArgs& a) {
  const auto [host, port] = parse_host_port(a.coordinator, "--coordinator");
  const std::filesystem::path pki = a.pki;
  const auto tls = protocol::TlsMaterial::load(
      pki / "ca.crt", pki / (a.identity + ".crt"), pki / (a.identity + ".key"));
  const auto deadline =
      std::chrono::milliseconds(static_cast<std::int64_t>(a.deadline_s * 1000));
  while (true) {
    const auto s = coordinator::ask_status(host, port, tls, deadline);
    if (a.json) {
      fmt::print("{}\n", to_json(s).dump());
    } else {
      print(s, a.coordinator);
    }
    std::fflush(stdout);
    if (a.watch_s <= 0 || s.phase == "done") return 0;
    std::this_thread::sleep_for(
        std::chrono::milliseconds(static_cast<std::int64_t>(a.watch_s * 1000)));
    if (!a.json) fmt::print("\n");
  }
}

}  // namespace

std::function<int()> add_status_command(CLI::App& app) {
  auto args = std::make_shared<StatusArgs>();
  auto* cmd = app.add_subcommand(
      "status",
      "Ask a running coordinator what it is doing (an operator's certificate): "
      "the round and its phase, each rostered node's state (answering, "
      "connected, left out and why, refused and why, disconnected), when it "
      "was last heard "
      "from, its progress in the round, and the inputs and bytes so far.");
  cmd->add_option("--coordinator", args->coordinator,
                  "HOST:PORT of the coordinator (its coordinator.listen and "
                  "port)")
      ->required();
  cmd->add_option("--pki", args->pki,
                  "The directory holding ca.crt and the operator's "
                  "IDENTITY.crt / IDENTITY.key")
      ->capture_default_str();
  cmd->add_option("--identity", args->identity,
                  "The operator's certificate name (listed in the "
                  "coordinator's coordinator.operators)")
      ->capture_default_str();
  cmd->add_flag("--json", args->json,
                "Print the status as one JSON object per line");
  cmd->add_option("--watch", args->watch_s,
                  "Ask again every SECONDS until the rounds are done (Ctrl-C "
                  "stops)")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--deadline", args->deadline_s,
                  "Seconds to wait for the coordinator's answer")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  return [args] { return run_status(*args); };
}

}  // namespace chorus::app
