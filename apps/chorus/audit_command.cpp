// chorus audit verify LOG --cert CERT [--json]
// chorus audit reconcile NODE_LOG COORDINATOR_LOG [--node NAME] [--json]
#include "audit_command.hpp"

#include <fmt/format.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/protocol/audit.hpp"

namespace chorus::app {
namespace {

nlohmann::json request_json(const protocol::LoggedRequest& r) {
  nlohmann::json j{{"line", r.line},
                   {"time", r.time},
                   {"peer", r.record.peer},
                   {"kind", r.record.kind},
                   {"request_id", r.record.request_id},
                   {"round", r.record.round},
                   {"inputs", r.record.inputs},
                   {"outcome", r.record.outcome}};
  if (r.undelivered) j["undelivered"] = true;
  return j;
}

std::string request_text(const protocol::LoggedRequest& r) {
  return fmt::format("line {}: {} {} request {} round {}{}: {}{}", r.line,
                     r.time, r.record.kind, r.record.request_id, r.record.round,
                     r.record.kind == "predict"
                         ? fmt::format(" ({} inputs)", r.record.inputs)
                         : std::string(),
                     r.record.outcome, r.undelivered ? " (not delivered)" : "");
}

int reconcile(const std::string& node_log, const std::string& coordinator_log,
              const std::string& node, bool json) {
  const auto r = protocol::reconcile_audit(node_log, coordinator_log, node);
  if (json) {
    nlohmann::json out{{"node", r.node},
                       {"coordinator", r.coordinator},
                       {"node_log", node_log},
                       {"coordinator_log", coordinator_log},
                       {"matched", r.matched},
                       {"agrees", r.agrees()},
                       {"only_node", nlohmann::json::array()},
                       {"only_coordinator", nlohmann::json::array()},
                       {"disagree", nlohmann::json::array()}};
    for (const auto& x : r.only_node)
      out["only_node"].push_back(request_json(x));
    for (const auto& x : r.only_coordinator)
      out["only_coordinator"].push_back(request_json(x));
    for (const auto& [n, c] : r.disagree)
      out["disagree"].push_back(
          {{"node", request_json(n)}, {"coordinator", request_json(c)}});
    fmt::print("{}\n", out.dump(2));
    return r.agrees() ? 0 : 1;
  }
  fmt::print("node '{}' ({}) and coordinator '{}' ({})\n", r.node, node_log,
             r.coordinator.empty() ? "?" : r.coordinator, coordinator_log);
  fmt::print(
      "matched           {} request(s) in both logs, outcomes agreeing\n",
      r.matched);
  if (!r.only_node.empty()) {
    fmt::print(
        "only in the node's log ({}): received, but the coordinator's log "
        "does not say it sent them\n",
        r.only_node.size());
    for (const auto& x : r.only_node) fmt::print("  {}\n", request_text(x));
  }
  if (!r.only_coordinator.empty()) {
    fmt::print(
        "only in the coordinator's log ({}): sent, but the node's log does "
        "not say it received them\n",
        r.only_coordinator.size());
    for (const auto& x : r.only_coordinator)
      fmt::print("  {}\n", request_text(x));
  }
  if (!r.disagree.empty()) {
    fmt::print("outcomes that disagree ({}):\n", r.disagree.size());
    for (const auto& [n, c] : r.disagree) {
      fmt::print("  node        {}\n  coordinator {}\n", request_text(n),
                 request_text(c));
    }
  }
  fmt::print("{}\n", r.agrees() ? "reconciled: the two logs agree"
                                : "NOT reconciled: see the requests above");
  return r.agrees() ? 0 : 1;
}

}  // namespace

int verify_request_log(const std::string& log, const std::string& cert,
                       bool json) {
  const auto v = protocol::verify_audit(log, read_file(cert));
  if (json) {
    nlohmann::json out{{"log", log},
                       {"intact", v.intact},
                       {"lines", v.lines},
                       {"seals", v.seals},
                       {"last_sealed_line", v.last_sealed_line},
                       {"signer", v.signer},
                       {"first_bad_line", v.first_bad_line},
                       {"problem", v.problem}};
    fmt::print("{}\n", out.dump(2));
    return v.intact ? 0 : 1;
  }
  if (!v.intact) {
    fmt::print("TAMPERED  {}: line {}: {}\n", log, v.first_bad_line, v.problem);
    return 1;
  }
  fmt::print(
      "intact    {}: {} lines, hash chain unbroken, {} seal(s) by "
      "'{}'{}\n",
      log, v.lines, v.seals, v.signer,
      v.last_sealed_line == 0 ? std::string()
                              : fmt::format(" verified, the last at "
                                            "line {}",
                                            v.last_sealed_line));
  if (v.last_sealed_line < v.lines) {
    fmt::print(
        "unsealed  lines {}..{}: their chain holds, but no seal covers them "
        "yet (a running node or coordinator seals every 100 lines and when "
        "it stops)\n",
        v.last_sealed_line + 1, v.lines);
  }
  return 0;
}

std::function<int()> add_audit_command(CLI::App& app) {
  struct Args {
    std::string log, cert, node_log, coordinator_log, node;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "audit",
      "Check request logs: a node's audit log (state_dir/audit.jsonl) and "
      "the coordinator's request log (run_dir/requests.jsonl) are both "
      "hash-chained and sealed with their writer's key.");
  cmd->require_subcommand(1);
  auto* verify = cmd->add_subcommand(
      "verify",
      "Check a log's hash chain and seals with its writer's certificate: "
      "'intact', or the first edited, deleted, inserted or reordered line "
      "(exit 1).");
  verify->add_option("LOG", args->log, "The log")
      ->required()
      ->check(CLI::ExistingFile);
  verify
      ->add_option("--cert", args->cert,
                   "The certificate of the node or coordinator that wrote it")
      ->required()
      ->check(CLI::ExistingFile);
  verify->add_flag("--json", args->json, "Print JSON");
  auto* rec = cmd->add_subcommand(
      "reconcile",
      "List the requests one side logged and the other did not, and those "
      "whose outcomes disagree; exit 0 when the logs agree, 1 when not. "
      "Requests are matched by kind, id, round and inputs, in order.");
  rec->add_option("NODE_LOG", args->node_log, "The node's audit log")
      ->required()
      ->check(CLI::ExistingFile);
  rec->add_option("COORDINATOR_LOG", args->coordinator_log,
                  "The coordinator's request log (run_dir/requests.jsonl)")
      ->required()
      ->check(CLI::ExistingFile);
  rec->add_option("--node", args->node,
                  "The node's name in the coordinator's log (default: the "
                  "signer of the node log's seals)");
  rec->add_flag("--json", args->json, "Print JSON");
  return [args, verify, rec]() -> int {
    if (verify->parsed())
      return verify_request_log(args->log, args->cert, args->json);
    if (rec->parsed())
      return reconcile(args->node_log, args->coordinator_log, args->node,
                       args->json);
    return 2;
  };
}

}  // namespace chorus::app
