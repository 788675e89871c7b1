#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace chorus::app {

/// Declares `chorus audit` (verify, reconcile) on `app` and returns what
/// runs it.
std::function<int()> add_audit_command(CLI::App& app);

/// Checks a request log's hash chain and seals with `cert` and prints what
/// it found (JSON with `json`); 0 when intact, 1 when not. `chorus audit
/// verify` and `chorus node audit --verify`.
int verify_request_log(const std::string& log, const std::string& cert,
                       bool json);

}  // namespace chorus::app
