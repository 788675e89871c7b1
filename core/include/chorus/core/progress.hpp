#pragma once

#include <fmt/format.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>

/// Live progress bars at the bottom of a terminal: expert training, a
/// round's querying (one line per node), the fit, the model push. Only on a
/// terminal: when stderr is not one (a pipe, a file, CI), `enabled()` is
/// false, a `Bar` draws nothing and the log lines are all there is.
///
/// Every console log line goes through `print` (log.cpp's console sink
/// does), so lines scroll above the bars instead of through them.
/// Thread-safe; no torch, no Asio.
namespace chorus::progress {

/// Whether bars are drawn in this process: stderr is a terminal, TERM is
/// not "dumb", and $CHORUS_PROGRESS is not "0" (or "off"). Decided on the
/// first call.
bool enabled();

/// Writes `text` (whole lines; a missing final newline is added) to stderr
/// above the bars, which are redrawn below it.
void print(std::string_view text);

/// Runs `write`, which writes whole lines to stderr by itself (a log
/// sink), with the bars erased, and redraws them below what it wrote.
void around(const std::function<void()>& write);

/// `print` of a formatted line.
template <typename... Args>
void println(fmt::format_string<Args...> format, Args&&... args) {
  print(fmt::format(format, std::forward<Args>(args)...));
}

/// One line of the live view, from construction until destruction (which
/// removes it). Without `enabled()` every member is a cheap no-op.
class Bar {
 public:
  /// `label` counting `unit`s up to `total` (0: no known total — no
  /// percentage and no ETA).
  Bar(std::string label, double total, std::string unit);
  ~Bar();
  Bar(const Bar&) = delete;
  Bar& operator=(const Bar&) = delete;

  /// `done` units so far; `detail` (e.g. "loss 0.41") follows the figures.
  void update(double done, std::string detail = {});
  /// `done` += `delta`.
  void advance(double delta);
  void set_total(double total);
  void set_detail(std::string detail);

  struct Line;  ///< progress.cpp's: what the live view draws.

 private:
  std::shared_ptr<Line> line_;
};

/// The text of one bar, at most `width` columns: label, a bar and the
/// percentage (with a total), done/total and unit, the rate per second,
/// the ETA (with a total) or the elapsed time, then `detail`. For tests
/// and for `Bar`.
std::string render(std::string_view label, double done, double total,
                   std::string_view unit, double seconds,
                   std::string_view detail, int width);

/// "1.2k", "3.4M": a count in at most five characters.
std::string compact(double value);

/// "42s", "3m05s", "1h02m".
std::string duration(double seconds);

}  // namespace chorus::progress
