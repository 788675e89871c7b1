#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace chorus::app {

/// Declares `chorus report` on `app` and returns what runs it.
std::function<int()> add_report_command(CLI::App& app);

}  // namespace chorus::app
