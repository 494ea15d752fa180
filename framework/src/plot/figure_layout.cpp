#include "figure_layout.h"

#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>

namespace dschat::plot {
namespace {

// Curves whose sizes differ more than this share no axis: the smaller would be a flat line at zero.
constexpr double kMaxScaleRatio = 30;
// Positive values spanning at least this factor get a log axis.
constexpr double kLogAxisSpan = 25;
// The metrics a reader looks for first, in this order; the rest follow in the order the stage logged them.
const std::vector<std::string> kLeadingGroups = {"loss", "perplexity", "accuracy", "reward", "kl"};

double largest_magnitude(const Series& series) {
  double largest = 0;
  for (const auto& point : series.points) largest = std::max(largest, std::abs(point.value));
  return largest;
}

bool wants_log_axis(const std::string& group, const std::vector<const Series*>& curves) {
  if (group == "lr") return false;  // a schedule reads on a linear axis; a log one blows up its decay to zero
  double low = INFINITY, high = 0;
  for (const auto* series : curves)
    for (const auto& point : series->points) {
      if (point.value <= 0) return false;
      low = std::min(low, point.value);
      high = std::max(high, point.value);
    }
  return high >= low * kLogAxisSpan;
}

// Splits one group (in log order) into sets of curves of comparable size, largest first; each set keeps the
// log order, so a legend lists the curves as the stage logged them.
std::vector<std::vector<const Series*>> split_by_scale(const std::vector<const Series*>& group) {
  std::vector<const Series*> curves = group;
  std::stable_sort(curves.begin(), curves.end(), [](const Series* a, const Series* b) {
    return largest_magnitude(*a) > largest_magnitude(*b);
  });
  std::vector<std::vector<const Series*>> sets;
  double set_largest = 0;
  for (const auto* series : curves) {
    const double size = largest_magnitude(*series);
    if (sets.empty() || size * kMaxScaleRatio < set_largest) {
      sets.emplace_back();
      set_largest = size;
    }
    sets.back().push_back(series);
  }
  for (auto& set : sets)
    // The pointers point into StageHistory::series, which is in log order.
    std::sort(set.begin(), set.end(), [](const Series* a, const Series* b) { return a < b; });
  return sets;
}

int group_rank(const std::string& group) {
  auto it = std::find(kLeadingGroups.begin(), kLeadingGroups.end(), group);
  return static_cast<int>(it - kLeadingGroups.begin());
}

Panel make_panel(const std::string& stage, const std::string& group, std::vector<const Series*> curves) {
  Panel panel;
  panel.y_label = curves.size() == 1 ? curves.front()->tag : group;
  panel.title = fmt::format("{}: {}", stage, panel.y_label);
  panel.log_y = wants_log_axis(group, curves);
  panel.curves = std::move(curves);
  return panel;
}

}  // namespace

std::string metric_group(const std::string& tag) {
  const auto slash = tag.rfind('/');
  const std::string first = tag.substr(0, tag.find('/'));
  std::string leaf = slash == std::string::npos ? tag : tag.substr(slash + 1);
  if (first == "time") return "time";
  if (leaf == "mean" && slash != std::string::npos) {  // "reward/mean": the group is what it is the mean of
    const std::string parent = tag.substr(0, slash);
    leaf = parent.substr(parent.rfind('/') == std::string::npos ? 0 : parent.rfind('/') + 1);
  }
  if (leaf.rfind("ema_", 0) == 0) leaf = leaf.substr(4);
  if (leaf.rfind("tflops", 0) == 0) return "tflops";
  if (leaf.size() > 6 && leaf.compare(leaf.size() - 6, 6, "_score") == 0) return "score";  // chosen_, rejected_
  return leaf;
}

Figure lay_out_figure(const StageHistory& history) {
  Figure figure;
  figure.stage = history.stage;
  std::vector<std::string> group_order;
  std::map<std::string, std::vector<const Series*>> groups;
  for (const auto& series : history.series) {
    const std::string group = metric_group(series.tag);
    if (!groups.count(group)) group_order.push_back(group);
    groups[group].push_back(&series);
  }
  // A group of single values (the data counters) has no curve: its values are listed. A single value in a group
  // with curves (the EMA's one eval beside the actor's) is drawn there as a point.
  auto logged_once = std::stable_partition(group_order.begin(), group_order.end(), [&](const std::string& group) {
    return std::any_of(groups[group].begin(), groups[group].end(),
                       [](const Series* series) { return series->points.size() > 1; });
  });
  for (auto it = logged_once; it != group_order.end(); ++it)
    for (const auto* series : groups[*it]) {
      const auto& point = series->points.front();
      figure.logged_once.push_back(fmt::format("{} = {:g} (step {})", series->tag, point.value, point.step));
    }
  group_order.erase(logged_once, group_order.end());
  std::stable_sort(group_order.begin(), group_order.end(),
                   [](const std::string& a, const std::string& b) { return group_rank(a) < group_rank(b); });
  for (const auto& group : group_order)
    for (auto& curves : split_by_scale(groups[group]))
      figure.panels.push_back(make_panel(history.stage, group, std::move(curves)));
  const int cells = static_cast<int>(figure.panels.size()) + (figure.logged_once.empty() ? 0 : 1);
  figure.columns = cells <= 1 ? 1 : cells <= 4 ? 2 : 3;
  figure.rows = std::max(1, (cells + figure.columns - 1) / figure.columns);
  return figure;
}

}  // namespace dschat::plot
