#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace chorus::app {

/// Declares `chorus predict` on `app` and returns what runs it.
std::function<int()> add_predict_command(CLI::App& app);

}  // namespace chorus::app
