#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <utility>
#include <vector>

namespace chorus::app {

/// Declares `chorus certs init | add-node | show` on `app`; returns each
/// subcommand with what runs it.
std::vector<std::pair<CLI::App*, std::function<int()>>> add_certs_commands(
    CLI::App& app);

}  // namespace chorus::app
