#pragma once
// Small charts as inline SVG for `chorus report` (html_report.cpp): no
// script, no network, nothing to install. Debian packages no C++ plotting
// library that writes SVG without a display stack, and these four charts
// are a few hundred lines. Every text is escaped; degenerate data (no
// points, one value, equal values) draws an empty frame saying so, never
// NaN coordinates. Torch-free; tested in tests/simulate/svg_test.cpp.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace chorus::simulate::svg {

/// `text` safe inside HTML/SVG text and attribute values.
std::string escape(std::string_view text);

/// About `count` round tick values (1, 2 or 5 × 10^k steps) covering
/// [lo, hi]; lo == hi is widened around it.
std::vector<double> ticks(double lo, double hi, int count = 5);

struct Point {
  double x = 0, y = 0;
  std::string label;
  int group = 0;  ///< Colour (0: experts, 1: fusers, 2: ...).
};

/// A scatter plot with labelled points (the cost/accuracy plane).
std::string scatter(const std::vector<Point>& points, std::string_view x_label,
                    std::string_view y_label, std::string_view title);

/// A line per series over the same x values (e.g. per-round metrics).
struct Series {
  std::string name;
  std::vector<double> y;
};
std::string lines(const std::vector<double>& x,
                  const std::vector<Series>& series, std::string_view x_label,
                  std::string_view y_label, std::string_view title);

/// Stacked horizontal bars: one bar per row, one segment per part
/// (e.g. a round's time by phase).
struct Bar {
  std::string label;
  std::vector<double> parts;
};
std::string stacked_bars(const std::vector<Bar>& bars,
                         const std::vector<std::string>& part_names,
                         std::string_view x_label, std::string_view title);

/// A confusion matrix: rows the true labels, columns the predictions; each
/// cell shaded by its share of the row, with its count.
std::string heatmap(const std::vector<std::string>& labels,
                    const std::vector<std::vector<std::int64_t>>& counts,
                    std::string_view title);

}  // namespace chorus::simulate::svg
