#include "svg.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace chorus::simulate::svg {
namespace {

constexpr std::array<const char*, 6> kColours = {
    "#8c8c8c", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"};

const char* colour(int i) {
  return kColours[static_cast<std::size_t>(std::abs(i)) % kColours.size()];
}

std::string number(double v) {
  if (v == 0) return "0";
  const double a = std::abs(v);
  if (a >= 1e6 || a < 1e-3) return fmt::format("{:.2g}", v);
  if (a >= 100) return fmt::format("{:.0f}", v);
  return fmt::format("{:.3g}", v);
}

// The plot area inside a W×H canvas, and the mapping of data to it.
struct Frame {
  double width = 640, height = 360;
  double left = 64, right = 20, top = 36, bottom = 52;
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;

  double px(double x) const {
    return left + (x - x0) / (x1 - x0) * (width - left - right);
  }
  double py(double y) const {
    return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom);
  }
};

std::string open(const Frame& f, std::string_view title) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" "
      "width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<text x=\"{}\" y=\"20\" font-size=\"14\" "
      "font-weight=\"bold\">{}</text>\n",
      f.width, f.height, f.width, f.height, escape(title), f.left,
      escape(title));
}

// Axes, grid lines and tick labels; sets the frame's ranges to the ticks'.
std::string axes(Frame& f, double xlo, double xhi, double ylo, double yhi,
                 std::string_view x_label, std::string_view y_label) {
  const auto xt = ticks(xlo, xhi);
  const auto yt = ticks(ylo, yhi);
  f.x0 = xt.front();
  f.x1 = xt.back();
  f.y0 = yt.front();
  f.y1 = yt.back();
  std::string out;
  for (double t : yt) {
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#e0e0e0\"/>\n<text x=\"{:.1f}\" y=\"{:.1f}\" "
        "text-anchor=\"end\">{}</text>\n",
        f.left, f.py(t), f.width - f.right, f.py(t), f.left - 6, f.py(t) + 4,
        number(t));
  }
  for (double t : xt) {
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#e0e0e0\"/>\n<text x=\"{:.1f}\" y=\"{:.1f}\" "
        "text-anchor=\"middle\">{}</text>\n",
        f.px(t), f.top, f.px(t), f.height - f.bottom, f.px(t),
        f.height - f.bottom + 16, number(t));
  }
  out += fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
      "fill=\"none\" stroke=\"#606060\"/>\n",
      f.left, f.top, f.width - f.left - f.right, f.height - f.top - f.bottom);
  out += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n",
      (f.left + f.width - f.right) / 2, f.height - 12, escape(x_label));
  out += fmt::format(
      "<text transform=\"translate(16 {:.1f}) rotate(-90)\" "
      "text-anchor=\"middle\">{}</text>\n",
      (f.top + f.height - f.bottom) / 2, escape(y_label));
  return out;
}

std::string empty(const Frame& f, std::string_view title) {
  return open(f, title) +
         fmt::format(
             "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" "
             "fill=\"#808080\">no data</text>\n</svg>\n",
             f.width / 2, f.height / 2);
}

bool finite(double v) { return std::isfinite(v); }

}  // namespace

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::vector<double> ticks(double lo, double hi, int count) {
  if (!finite(lo) || !finite(hi)) lo = 0, hi = 1;
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12) {
    const double pad = std::abs(lo) > 1e-12 ? std::abs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / std::max(1, count);
  const double magnitude = std::pow(10, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  std::vector<double> out;
  const double first = std::floor(lo / step) * step;
  for (double t = first; t < hi + step * 0.999; t += step) {
    out.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
    if (out.size() > 50) break;
  }
  if (out.size() < 2) out.push_back(out.back() + step);
  return out;
}

std::string scatter(const std::vector<Point>& points, std::string_view x_label,
                    std::string_view y_label, std::string_view title) {
  Frame f;
  f.width = 760;
  f.right = 140;  // Room for the labels of the rightmost points.
  std::vector<Point> p;
  for (const auto& q : points)
    if (finite(q.x) && finite(q.y)) p.push_back(q);
  if (p.empty()) return empty(f, title);
  auto [xmin, xmax] = std::minmax_element(
      p.begin(), p.end(), [](auto& a, auto& b) { return a.x < b.x; });
  auto [ymin, ymax] = std::minmax_element(
      p.begin(), p.end(), [](auto& a, auto& b) { return a.y < b.y; });
  std::string out = open(f, title);
  out += axes(f, std::min(0.0, xmin->x), xmax->x, ymin->y, ymax->y, x_label,
              y_label);
  for (const auto& q : p) {
    out += fmt::format(
        "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"5\" fill=\"{}\"><title>{}: "
        "{} , {}</title></circle>\n<text x=\"{:.1f}\" y=\"{:.1f}\" "
        "font-size=\"11\">{}</text>\n",
        f.px(q.x), f.py(q.y), colour(q.group), escape(q.label), number(q.x),
        number(q.y), f.px(q.x) + 7, f.py(q.y) - 6, escape(q.label));
  }
  return out + "</svg>\n";
}

std::string lines(const std::vector<double>& x,
                  const std::vector<Series>& series, std::string_view x_label,
                  std::string_view y_label, std::string_view title) {
  Frame f;
  double ylo = INFINITY, yhi = -INFINITY;
  for (const auto& s : series)
    for (std::size_t i = 0; i < s.y.size() && i < x.size(); ++i)
      if (finite(s.y[i]))
        ylo = std::min(ylo, s.y[i]), yhi = std::max(yhi, s.y[i]);
  if (x.empty() || !finite(ylo)) return empty(f, title);
  const auto [xlo, xhi] = std::minmax_element(x.begin(), x.end());
  std::string out = open(f, title);
  out += axes(f, *xlo, *xhi, std::min(0.0, ylo), yhi, x_label, y_label);
  for (std::size_t k = 0; k < series.size(); ++k) {
    std::string path;
    for (std::size_t i = 0; i < series[k].y.size() && i < x.size(); ++i) {
      if (!finite(series[k].y[i])) continue;
      path += fmt::format("{}{:.1f},{:.1f} ", path.empty() ? "M" : "L",
                          f.px(x[i]), f.py(series[k].y[i]));
      out += fmt::format(
          "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n",
          f.px(x[i]), f.py(series[k].y[i]), colour(static_cast<int>(k) + 1));
    }
    out += fmt::format(
        "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
        path, colour(static_cast<int>(k) + 1));
    out += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" fill=\"{}\">{}</text>\n",
        f.width - f.right - 150, f.top + 16 + 14 * static_cast<double>(k),
        colour(static_cast<int>(k) + 1), escape(series[k].name));
  }
  return out + "</svg>\n";
}

std::string stacked_bars(const std::vector<Bar>& bars,
                         const std::vector<std::string>& part_names,
                         std::string_view x_label, std::string_view title) {
  Frame f;
  f.left = 110;
  f.height = std::max(140.0, 90 + 26 * static_cast<double>(bars.size()));
  double total = 0;
  for (const auto& b : bars) {
    double sum = 0;
    for (double v : b.parts)
      if (finite(v) && v > 0) sum += v;
    total = std::max(total, sum);
  }
  if (bars.empty() || total <= 0) return empty(f, title);
  std::string out = open(f, title);
  const auto xt = ticks(0, total);
  f.x0 = xt.front();
  f.x1 = xt.back();
  for (double t : xt) {
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#e0e0e0\"/>\n<text x=\"{:.1f}\" y=\"{:.1f}\" "
        "text-anchor=\"middle\">{}</text>\n",
        f.px(t), f.top, f.px(t), f.height - f.bottom, f.px(t),
        f.height - f.bottom + 16, number(t));
  }
  for (std::size_t i = 0; i < bars.size(); ++i) {
    const double y = f.top + 6 + 26 * static_cast<double>(i);
    out += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n",
        f.left - 6, y + 14, escape(bars[i].label));
    double at = 0;
    for (std::size_t k = 0; k < bars[i].parts.size(); ++k) {
      const double v = bars[i].parts[k];
      if (!finite(v) || v <= 0) continue;
      out += fmt::format(
          "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"18\" "
          "fill=\"{}\"><title>{}: {}</title></rect>\n",
          f.px(at), y, f.px(at + v) - f.px(at), colour(static_cast<int>(k) + 1),
          escape(k < part_names.size() ? part_names[k] : ""), number(v));
      at += v;
    }
  }
  double lx = f.left;
  for (std::size_t k = 0; k < part_names.size(); ++k) {
    out += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"10\" height=\"10\" "
        "fill=\"{}\"/><text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n",
        lx, f.height - 22, colour(static_cast<int>(k) + 1), lx + 14,
        f.height - 13, escape(part_names[k]));
    lx += 20 + 8 * static_cast<double>(part_names[k].size());
  }
  out += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n",
      f.width - f.right, f.height - 13, escape(x_label));
  return out + "</svg>\n";
}

std::string heatmap(const std::vector<std::string>& labels,
                    const std::vector<std::vector<std::int64_t>>& counts,
                    std::string_view title) {
  const auto n = labels.size();
  Frame f;
  const double cell = n > 12 ? 24 : 36;
  f.left = 120;
  f.top = 44;
  f.width = std::max(460.0, f.left + cell * static_cast<double>(n) + 20);
  f.height = f.top + cell * static_cast<double>(n) + 110;
  bool square = n > 0 && counts.size() == n;
  for (const auto& row : counts) square = square && row.size() == n;
  if (!square) return empty(f, title);
  std::string out = open(f, title);
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t row_total = 0;
    for (auto c : counts[i]) row_total += std::max<std::int64_t>(c, 0);
    out += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n",
        f.left - 6, f.top + cell * (static_cast<double>(i) + 0.6),
        escape(labels[i]));
    for (std::size_t j = 0; j < n; ++j) {
      const auto c = std::max<std::int64_t>(counts[i][j], 0);
      const double share = row_total > 0 ? static_cast<double>(c) /
                                               static_cast<double>(row_total)
                                         : 0;
      // White to blue by the share of the true label's row.
      const int shade = static_cast<int>(255 - share * 200);
      out += fmt::format(
          "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{}\" height=\"{}\" "
          "fill=\"rgb({},{},255)\" stroke=\"#ffffff\"><title>true {}, "
          "predicted {}: {}</title></rect>\n",
          f.left + cell * static_cast<double>(j),
          f.top + cell * static_cast<double>(i), cell, cell, shade, shade,
          escape(labels[i]), escape(labels[j]), c);
      if (c > 0) {
        out += fmt::format(
            "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" "
            "font-size=\"10\" fill=\"{}\">{}</text>\n",
            f.left + cell * (static_cast<double>(j) + 0.5),
            f.top + cell * (static_cast<double>(i) + 0.6),
            share > 0.5 ? "#ffffff" : "#000000", c);
      }
    }
    out += fmt::format(
        "<text transform=\"translate({:.1f} {:.1f}) rotate(-50)\" "
        "text-anchor=\"end\">{}</text>\n",
        f.left + cell * (static_cast<double>(i) + 0.6),
        f.top + cell * static_cast<double>(n) + 10, escape(labels[i]));
  }
  out += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\">rows: true label; columns: "
      "prediction</text>\n",
      f.left, f.height - 8);
  return out + "</svg>\n";
}

}  // namespace chorus::simulate::svg
