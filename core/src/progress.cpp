#include "chorus/core/progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace chorus::progress {

using Clock = std::chrono::steady_clock;

struct Bar::Line {
  std::string label, unit, detail;
  double done = 0, total = 0;
  Clock::time_point start = Clock::now();
};

namespace {

// Bars are redrawn at most this often, except when one appears or goes.
constexpr auto kRedrawEvery = std::chrono::milliseconds(100);
// Lines of the live view at most; the rest are summarised in one line.
constexpr std::size_t kMaxLines = 16;

// The live view: the bars in order of creation and how many lines of the
// terminal the last draw took (the cursor sits at the start of the line
// below them).
struct Display {
  std::mutex mutex;
  std::vector<std::shared_ptr<Bar::Line>> lines;
  int drawn = 0;
  Clock::time_point last_draw{};
};

Display& display() {
  static Display d;
  return d;
}

void write_all(std::string_view text) {
  while (!text.empty()) {
    const auto n = ::write(STDERR_FILENO, text.data(), text.size());
    if (n <= 0) return;  // Nowhere to show progress: not worth an error.
    text.remove_prefix(static_cast<std::size_t>(n));
  }
}

int terminal_width() {
  winsize size{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0)
    return size.ws_col;
  return 80;
}

// Moves the cursor up over the drawn bars and clears from there down.
void erase_locked(Display& d, std::string& out) {
  if (d.drawn > 0) out += fmt::format("\x1b[{}A\r\x1b[J", d.drawn);
  d.drawn = 0;
}

void draw_locked(Display& d, std::string& out) {
  // One column short of the width: a full line would wrap on some
  // terminals and throw the line count off.
  const int width = std::max(20, terminal_width() - 1);
  const auto now = Clock::now();
  std::size_t shown = 0;
  for (const auto& l : d.lines) {
    if (shown + 1 == kMaxLines && d.lines.size() > kMaxLines) break;
    out += render(l->label, l->done, l->total, l->unit,
                  std::chrono::duration<double>(now - l->start).count(),
                  l->detail, width);
    out += '\n';
    ++shown;
  }
  if (shown < d.lines.size()) {
    out += fmt::format("... and {} more\n", d.lines.size() - shown);
    ++shown;
  }
  d.drawn = static_cast<int>(shown);
  d.last_draw = now;
}

// Redraws the view when `force`d or when the last draw is old enough.
void redraw(bool force) {
  auto& d = display();
  std::string out;
  {
    std::lock_guard lock(d.mutex);
    if (!force && Clock::now() - d.last_draw < kRedrawEvery) return;
    erase_locked(d, out);
    draw_locked(d, out);
    write_all(out);
  }
}

std::string fixed(double value, int decimals) {
  return fmt::format("{:.{}f}", value, decimals);
}

}  // namespace

bool enabled() {
  static const bool on = [] {
    if (const char* env = std::getenv("CHORUS_PROGRESS")) {
      const std::string_view v(env);
      if (v == "0" || v == "off" || v == "false") return false;
    }
    const char* term = std::getenv("TERM");
    if (term != nullptr && std::string_view(term) == "dumb") return false;
    return ::isatty(STDERR_FILENO) == 1;
  }();
  return on;
}

void print(std::string_view text) {
  std::string out;
  auto& d = display();
  std::lock_guard lock(d.mutex);
  erase_locked(d, out);
  out += text;
  if (out.empty() || out.back() != '\n') out += '\n';
  if (enabled()) draw_locked(d, out);
  write_all(out);
}

void around(const std::function<void()>& write) {
  auto& d = display();
  std::lock_guard lock(d.mutex);
  std::string out;
  erase_locked(d, out);
  write_all(out);
  write();
  out.clear();
  draw_locked(d, out);
  write_all(out);
}

Bar::Bar(std::string label, double total, std::string unit) {
  if (!enabled()) return;
  line_ = std::make_shared<Line>();
  line_->label = std::move(label);
  line_->unit = std::move(unit);
  line_->total = total;
  {
    std::lock_guard lock(display().mutex);
    display().lines.push_back(line_);
  }
  redraw(true);
}

Bar::~Bar() {
  if (!line_) return;
  {
    std::lock_guard lock(display().mutex);
    std::erase(display().lines, line_);
  }
  redraw(true);
}

void Bar::update(double done, std::string detail) {
  if (!line_) return;
  {
    std::lock_guard lock(display().mutex);
    line_->done = done;
    if (!detail.empty()) line_->detail = std::move(detail);
  }
  redraw(false);
}

void Bar::advance(double delta) {
  if (!line_) return;
  {
    std::lock_guard lock(display().mutex);
    line_->done += delta;
  }
  redraw(false);
}

void Bar::set_total(double total) {
  if (!line_) return;
  {
    std::lock_guard lock(display().mutex);
    line_->total = total;
  }
  redraw(false);
}

void Bar::set_detail(std::string detail) {
  if (!line_) return;
  {
    std::lock_guard lock(display().mutex);
    line_->detail = std::move(detail);
  }
  redraw(false);
}

std::string compact(double value) {
  const double a = std::fabs(value);
  if (a < 1e4)
    return fixed(value, a < 10 && value != std::floor(value) ? 1 : 0);
  if (a < 1e6) return fixed(value / 1e3, a < 1e5 ? 1 : 0) + "k";
  if (a < 1e9) return fixed(value / 1e6, a < 1e8 ? 1 : 0) + "M";
  return fixed(value / 1e9, 1) + "G";
}

std::string duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string render(std::string_view label, double done, double total,
                   std::string_view unit, double seconds,
                   std::string_view detail, int width) {
  std::string out(label);
  const double rate = seconds > 0 ? done / seconds : 0;
  if (total > 0) {
    constexpr int kCells = 20;
    const double fraction = std::clamp(done / total, 0.0, 1.0);
    const int full = static_cast<int>(fraction * kCells);
    out += fmt::format(" [{}{}] {:3.0f}% {}/{}", std::string(full, '#'),
                       std::string(kCells - full, '-'), fraction * 100,
                       compact(done), compact(total));
    if (!unit.empty()) out += fmt::format(" {}", unit);
  } else if (done > 0 || !unit.empty()) {
    out += ' ' + compact(done);
    if (!unit.empty()) out += fmt::format(" {}", unit);
  }
  if (seconds >= 0.5 && done > 0) {
    out += fmt::format(" {}/s", compact(rate));
  }
  if (total > 0 && done < total && rate > 0) {
    out += " ETA " + duration((total - done) / rate);
  } else {
    out += ' ' + duration(seconds);
  }
  if (!detail.empty()) out += fmt::format("  {}", detail);
  if (width > 0 && out.size() > static_cast<std::size_t>(width)) {
    out.resize(static_cast<std::size_t>(width));
  }
  return out;
}

}  // namespace chorus::progress
