#include "plplot_figure.h"

#include <plplot.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>

#include "dschat/sdk/atomic_file.h"

namespace fs = std::filesystem;

namespace dschat::plot {
namespace {

// Pixels (points for SVG) of one panel, and of the band above the panels that holds the stage's title.
constexpr int kCellWidth = 600, kCellHeight = 430, kTitleBand = 70;
// Colour map 0: white background, black axes and text, grey grid, then the curves' colours (matplotlib's tab10).
constexpr int kBackground = 0, kInk = 1, kGrid = 2, kFirstCurveColour = 3;
constexpr std::array<std::array<int, 3>, 13> kColours = {{{255, 255, 255}, {0, 0, 0}, {215, 215, 215},
                                                          {31, 119, 180}, {255, 127, 14}, {44, 160, 44},
                                                          {214, 39, 40}, {148, 103, 189}, {140, 86, 75},
                                                          {227, 119, 194}, {127, 127, 127}, {188, 189, 34},
                                                          {23, 190, 207}}};
constexpr int kCurveColours = static_cast<int>(kColours.size()) - kFirstCurveColour;
// Curves with at most this many points also mark each point, so sparse evals read as measurements.
constexpr size_t kMarkPointsUpTo = 60;
constexpr size_t kBigMarkersUpTo = 5;  // a few evals among hundreds of training steps must stand out
const char* const kMarker = "•";
// PLplot scales its default character height with the page; this keeps text the same size in pixels on pages of
// any number of panels (0.65 of the default looks right on a page of 2 x 2 panels).
double text_scale = 1.0;
// A character's width at text_size(1), as a fraction of a panel's plot area.
constexpr double kCharWidth = 0.022;
double text_scale_for(int width, int height) { return 0.65 * (2 * kCellWidth + 2 * kCellHeight) / (width + height); }

void text_size(double relative) { plschr(0, text_scale * relative); }

int curve_colour(size_t k) { return kFirstCurveColour + static_cast<int>(k % kCurveColours); }

// PLplot reads '#' as the start of an escape sequence.
std::string plplot_text(const std::string& text) {
  std::string out;
  for (char c : text) out += c == '#' ? std::string("##") : std::string(1, c);
  return out;
}

std::string xml_text(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

// PLplot reports a recoverable error through the abort handler and goes on; the figure is then incomplete.
std::string plplot_error;
void record_plplot_error(PLCHAR_VECTOR message) { plplot_error = message; }
// A fatal error ends the process (PLplot calls exit() after the handler); at least leave no temporary behind.
fs::path temporary_being_drawn;
int leave_no_temporary(PLCHAR_VECTOR message) {
  std::error_code ec;
  fs::remove(temporary_being_drawn, ec);
  std::cerr << "dschat plot: PLplot failed drawing " << temporary_being_drawn.string() << ": " << message << "\n";
  return 1;
}

struct Box {
  double x_min, x_max, y_min, y_max;  // normalized device coordinates, 0..1
};

Box cell_box(const Figure& figure, int index, double title_fraction) {
  const double width = 1.0 / figure.columns;
  const double height = (1.0 - title_fraction) / figure.rows;
  const int column = index % figure.columns, row = index / figure.columns;
  const double left = column * width, top = 1.0 - title_fraction - row * height;
  return {left, left + width, top - height, top};
}

// Room inside a cell for the tick labels, axis labels and the panel's title.
Box plot_area(const Box& cell) {
  const double w = cell.x_max - cell.x_min, h = cell.y_max - cell.y_min;
  return {cell.x_min + 0.15 * w, cell.x_max - 0.04 * w, cell.y_min + 0.15 * h, cell.y_max - 0.11 * h};
}

double axis_value(double value, bool log_y) { return log_y ? std::log10(value) : value; }

// The world window: the steps as they are, the values with a margin so no curve runs along the frame.
Box world_window(const Panel& panel) {
  Box window{INFINITY, -INFINITY, INFINITY, -INFINITY};
  for (const auto* series : panel.curves)
    for (const auto& point : series->points) {
      window.x_min = std::min(window.x_min, static_cast<double>(point.step));
      window.x_max = std::max(window.x_max, static_cast<double>(point.step));
      window.y_min = std::min(window.y_min, axis_value(point.value, panel.log_y));
      window.y_max = std::max(window.y_max, axis_value(point.value, panel.log_y));
    }
  if (window.x_max == window.x_min) window.x_min -= 1, window.x_max += 1;
  const double x_margin = 0.015 * (window.x_max - window.x_min);  // a point on the first or last step stays visible
  window.x_min -= x_margin;
  window.x_max += x_margin;
  double margin = 0.06 * (window.y_max - window.y_min);
  if (margin == 0) margin = std::max(1e-6, 0.1 * std::abs(window.y_max));
  window.y_min -= margin;
  window.y_max += margin;
  return window;
}

// Where the legend goes: an inside corner no point of the curves falls in; failing that, the top right corner
// of a window raised so the curves stay below the legend.
struct LegendPlace {
  PLINT corner;
  Box window;
};

// The legend's extent as a fraction of the plot area, from its number of rows and longest text.
std::pair<double, double> legend_extent(const Panel& panel) {
  size_t longest = 0;
  for (const auto* series : panel.curves) longest = std::max(longest, series->tag.size());
  return {0.16 + 0.85 * kCharWidth * static_cast<double>(longest),
          0.06 + 0.085 * static_cast<double>(panel.curves.size())};
}

LegendPlace place_legend(const Panel& panel, Box window) {
  const auto [width, height] = legend_extent(panel);
  struct Corner {
    PLINT position;
    bool right, top;
  };
  const std::array<Corner, 4> corners = {{{PL_POSITION_TOP | PL_POSITION_RIGHT, true, true},
                                          {PL_POSITION_TOP | PL_POSITION_LEFT, false, true},
                                          {PL_POSITION_BOTTOM | PL_POSITION_RIGHT, true, false},
                                          {PL_POSITION_BOTTOM | PL_POSITION_LEFT, false, false}}};
  for (const auto& corner : corners) {
    bool free = true;
    for (const auto* series : panel.curves)
      for (const auto& point : series->points) {
        const double x = (point.step - window.x_min) / (window.x_max - window.x_min);
        const double y = (axis_value(point.value, panel.log_y) - window.y_min) / (window.y_max - window.y_min);
        const bool in_x = corner.right ? x >= 1 - width : x <= width;
        const bool in_y = corner.top ? y >= 1 - height : y <= height;
        free = free && !(in_x && in_y);
      }
    if (free) return {corner.position, window};
  }
  window.y_max = window.y_min + (window.y_max - window.y_min) / (1 - height - 0.03);
  return {PL_POSITION_TOP | PL_POSITION_RIGHT, window};
}

void draw_legend(const Panel& panel, PLINT corner) {
  const PLINT n = static_cast<PLINT>(panel.curves.size());
  std::vector<std::string> texts;
  std::vector<const char*> text_pointers, symbols(n, kMarker);
  std::vector<PLINT> options(n, PL_LEGEND_LINE | PL_LEGEND_SYMBOL), text_colours(n, kInk), colours(n),
      line_styles(n, 1), symbol_counts(n, 3);
  std::vector<PLFLT> line_widths(n, 2.0), symbol_scales(n, text_scale);
  for (PLINT k = 0; k < n; ++k) {
    texts.push_back(plplot_text(panel.curves[k]->tag));
    colours[k] = curve_colour(k);
  }
  for (const auto& text : texts) text_pointers.push_back(text.c_str());
  PLFLT width = 0, height = 0;
  pllegend(&width, &height, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
           corner | PL_POSITION_INSIDE | PL_POSITION_VIEWPORT, 0.02, 0.03, 0.08,
           kBackground, kInk, 1, 0, 0, n, options.data(), 1.0, 0.85 * text_scale, 2.0, 0.0, text_colours.data(),
           text_pointers.data(), nullptr, nullptr, nullptr, nullptr, colours.data(), line_styles.data(),
           line_widths.data(), colours.data(), symbol_scales.data(), symbol_counts.data(), symbols.data());
}

void draw_curve(const Series& series, bool log_y, int colour) {
  std::vector<PLFLT> x, y;
  for (const auto& point : series.points) {
    x.push_back(static_cast<PLFLT>(point.step));
    y.push_back(axis_value(point.value, log_y));
  }
  const PLINT n = static_cast<PLINT>(x.size());
  plcol0(colour);
  plwidth(2.0);
  plline(n, x.data(), y.data());
  if (series.points.size() <= kMarkPointsUpTo) {
    text_size(series.points.size() <= kBigMarkersUpTo ? 2.0 : 1.0);
    plstring(n, x.data(), y.data(), kMarker);
    text_size(1.0);
  }
  plwidth(1.0);
}

// Dense curves first, so a few eval points are not hidden under hundreds of noisy training steps.
std::vector<size_t> drawing_order(const Panel& panel) {
  std::vector<size_t> order(panel.curves.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return panel.curves[a]->points.size() > panel.curves[b]->points.size();
  });
  return order;
}

void draw_panel(const Panel& panel, const Box& cell) {
  const Box area = plot_area(cell);
  const bool with_legend = panel.curves.size() > 1;
  const LegendPlace legend =
      with_legend ? place_legend(panel, world_window(panel)) : LegendPlace{0, world_window(panel)};
  const Box& window = legend.window;
  plvpor(area.x_min, area.x_max, area.y_min, area.y_max);
  plwind(window.x_min, window.x_max, window.y_min, window.y_max);
  const char* y_axis = panel.log_y ? "bcnstvl" : "bcnstv";
  plcol0(kGrid);
  plbox("g", 0, 0, panel.log_y ? "gl" : "g", 0, 0);
  plcol0(kInk);
  plbox("bcnst", 0, 0, y_axis, 0, 0);
  plmtex("b", 3.0, 0.5, 0.5, "step");
  plmtex("l", 4.6, 0.5, 0.5, plplot_text(panel.y_label + (panel.log_y ? " (log scale)" : "")).c_str());
  plmtex("t", 1.2, 0.5, 0.5, plplot_text(panel.title).c_str());
  for (size_t k : drawing_order(panel)) draw_curve(*panel.curves[k], panel.log_y, curve_colour(k));
  if (with_legend) draw_legend(panel, legend.corner);
}

void draw_logged_once(const Figure& figure, const Box& cell) {
  const Box area = plot_area(cell);
  plvpor(area.x_min, area.x_max, area.y_min, area.y_max);
  plwind(0, 1, 0, 1);
  plcol0(kInk);
  plbox("bc", 0, 0, "bc", 0, 0);
  plmtex("t", 1.2, 0.5, 0.5, plplot_text(figure.stage + ": logged once").c_str());
  const size_t n = figure.logged_once.size();
  size_t longest = 0;
  for (const auto& line : figure.logged_once) longest = std::max(longest, line.size());
  const double spacing = std::min(0.1, 0.96 / (n + 0.5));
  // Smaller text for many lines (rows) or long ones (a character is about 2% of the panel's width).
  text_size(std::clamp(std::min(spacing / 0.1, 0.92 / (kCharWidth * longest)), 0.4, 0.9));
  for (size_t i = 0; i < n; ++i)
    plptex(0.04, 1.0 - (i + 0.8) * spacing, 1, 0, 0, plplot_text(figure.logged_once[i]).c_str());
  text_size(1.0);
}

void draw_title(const Figure& figure, const std::string& source, double title_fraction) {
  plvpor(0, 1, 1.0 - title_fraction, 1);
  plwind(0, 1, 0, 1);
  plcol0(kInk);
  text_size(1.6);
  plptex(0.5, 0.62, 1, 0, 0.5, plplot_text("stage " + figure.stage).c_str());
  text_size(0.8);
  plptex(0.5, 0.22, 1, 0, 0.5, plplot_text(source).c_str());
  text_size(1.0);
}

void draw_pages(const Figure& figure, const std::string& source, double title_fraction) {
  pladv(0);
  for (size_t i = 0; i < figure.panels.size(); ++i)
    draw_panel(figure.panels[i], cell_box(figure, static_cast<int>(i), title_fraction));
  if (!figure.logged_once.empty())
    draw_logged_once(figure, cell_box(figure, static_cast<int>(figure.panels.size()), title_fraction));
  draw_title(figure, source, title_fraction);
}

// svgcairo draws text as glyph outlines; a <title> and <desc> keep the figure's words searchable and readable
// by screen readers.
std::string svg_description(const Figure& figure, const std::string& source) {
  std::string desc = fmt::format("stage: {}\nsource: {}\n", figure.stage, source);
  for (const auto& panel : figure.panels) {
    std::string curves;
    for (const auto* series : panel.curves) curves += (curves.empty() ? "" : ", ") + series->tag;
    desc += fmt::format("panel \"{}\": x axis \"step\", y axis \"{}\"{}, curves: {}\n", panel.title, panel.y_label,
                        panel.log_y ? " (log scale)" : "", curves);
  }
  for (const auto& line : figure.logged_once) desc += "logged once: " + line + "\n";
  return fmt::format("<title>{}</title>\n<desc>{}</desc>\n", xml_text("dschat plot: stage " + figure.stage),
                     xml_text(desc));
}

void add_svg_description(const fs::path& svg, const Figure& figure, const std::string& source) {
  std::ifstream in(svg, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  std::string content = text.str();
  const size_t root = content.find("<svg");
  const size_t root_end = root == std::string::npos ? root : content.find('>', root);
  if (root_end == std::string::npos)
    throw std::runtime_error(fmt::format("svgcairo wrote no <svg> to {}", svg.string()));
  content.insert(root_end + 1, "\n" + svg_description(figure, source));
  std::ofstream out(svg, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out.flush()) throw std::runtime_error(fmt::format("cannot write {}", svg.string()));
}

void render(const Figure& figure, const std::string& source, ImageFormat format, const fs::path& temporary) {
  const int width = kCellWidth * figure.columns, height = kCellHeight * figure.rows + kTitleBand;
  std::vector<PLINT> red, green, blue;
  for (const auto& rgb : kColours) red.push_back(rgb[0]), green.push_back(rgb[1]), blue.push_back(rgb[2]);
  plsexit(leave_no_temporary);
  plsabort(record_plplot_error);
  plsdev(format == ImageFormat::png ? "pngcairo" : "svgcairo");
  plsfnam(temporary.c_str());
  plsetopt("geometry", fmt::format("{}x{}", width, height).c_str());
  plscmap0(red.data(), green.data(), blue.data(), static_cast<PLINT>(red.size()));
  plinit();
  text_scale = text_scale_for(width, height);
  text_size(1.0);
  draw_pages(figure, source, static_cast<double>(kTitleBand) / height);
  plend();
}

}  // namespace

const char* extension_of(ImageFormat format) { return format == ImageFormat::png ? "png" : "svg"; }

void draw_figure(const Figure& figure, const std::string& source, ImageFormat format, const fs::path& file) {
  const fs::path temporary = temporary_path_for(file);
  temporary_being_drawn = temporary;
  plplot_error.clear();
  try {
    render(figure, source, format, temporary);
    if (!plplot_error.empty()) throw std::runtime_error(fmt::format("PLplot: {}", plplot_error));
    if (!fs::exists(temporary)) throw std::runtime_error("PLplot wrote nothing");
    if (format == ImageFormat::svg) add_svg_description(temporary, figure, source);
    commit_file(temporary, file);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(temporary, ec);
    throw std::runtime_error(fmt::format("cannot draw {}: {}", file.string(), e.what()));
  }
}

}  // namespace dschat::plot
