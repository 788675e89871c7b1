#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <utility>
#include <vector>

namespace chorus::app {

/// Declares `chorus node` (run), `chorus node train` and `chorus node audit`
/// on `app`; returns each (sub)command with what runs it, most specific
/// first.
std::vector<std::pair<CLI::App*, std::function<int()>>> add_node_commands(
    CLI::App& app);

}  // namespace chorus::app
