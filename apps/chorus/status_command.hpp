#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace chorus::app {

/// Declares `chorus status` on `app` and returns what runs it.
std::function<int()> add_status_command(CLI::App& app);

}  // namespace chorus::app
