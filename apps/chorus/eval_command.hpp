#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace chorus::app {

/// Declares `chorus eval` on `app` and returns what runs it.
std::function<int()> add_eval_command(CLI::App& app);

}  // namespace chorus::app
