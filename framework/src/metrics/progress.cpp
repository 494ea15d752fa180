#include <unistd.h>

#include <cmath>
#include <iostream>

#include <fmt/format.h>

#include "dschat/framework/metrics.h"

namespace dschat {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

ConsoleProgress::ConsoleProgress(std::ostream* out, std::optional<bool> tty, double interval_s)
    : out_(out != nullptr ? out : &std::cerr),
      tty_(tty.value_or(out == nullptr && ::isatty(STDERR_FILENO) == 1)),
      interval_s_(interval_s) {}

void ConsoleProgress::start(const std::string& label, int64_t total_steps) {
  label_ = label;
  total_ = total_steps;
  step_ = items_ = 0;
  shown_.clear();
  start_ = last_print_ = Clock::now();
  printed_ = false;
  active_ = true;
  last_width_ = 0;
}

std::string ConsoleProgress::line(double elapsed_s) const {
  std::string text = total_ > 0 ? fmt::format("{} step {}/{}", label_, step_, total_) : fmt::format("{} step {}", label_, step_);
  for (const auto& [key, value] : shown_) text += fmt::format("  {} {:.4g}", key, value);
  if (elapsed_s > 0 && items_ > 0) text += fmt::format("  {:.1f} items/s", static_cast<double>(items_) / elapsed_s);
  if (total_ > 0 && step_ > 0 && step_ < total_)
    text += "  ETA " + format_duration(elapsed_s / static_cast<double>(step_) * static_cast<double>(total_ - step_));
  text += "  " + format_duration(elapsed_s) + " elapsed";
  return text;
}

void ConsoleProgress::update(int64_t step, const std::map<std::string, double>& shown, int64_t items) {
  if (!active_) start(label_.empty() ? "progress" : label_, total_);
  step_ = step;
  items_ += items;
  for (const auto& [k, v] : shown) shown_[k] = v;
  emit(false);
}

void ConsoleProgress::emit(bool force) {
  auto now = Clock::now();
  double since = std::chrono::duration<double>(now - last_print_).count();
  // A terminal line can change often; a log gets a line every interval (and the first update at once).
  double wait = tty_ ? 0.1 : interval_s_;
  if (!force && printed_ && since < wait) return;
  std::string text = line(std::chrono::duration<double>(now - start_).count());
  if (tty_) {
    size_t width = text.size();
    if (width < last_width_) text.append(last_width_ - width, ' ');  // erase the tail of a longer previous line
    last_width_ = width;
    *out_ << '\r' << text;
  } else {
    *out_ << text << '\n';
  }
  out_->flush();
  last_print_ = now;
  printed_ = true;
}

void ConsoleProgress::finish() {
  if (!active_) return;
  emit(true);
  if (tty_) *out_ << '\n';
  out_->flush();
  active_ = false;
}

}  // namespace dschat
