#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace chorus::app {

/// Declares `chorus coordinator` on `app` and returns what runs it.
std::function<int()> add_coordinator_command(CLI::App& app);

}  // namespace chorus::app
