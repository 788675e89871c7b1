#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace chorus::app {

/// Declares `chorus simulate` on `app` and returns what runs it.
std::function<int()> add_simulate_command(CLI::App& app, const char* argv0);

}  // namespace chorus::app
