#pragma once
// Which curves share a panel: one figure per stage, one panel per metric or group of related metrics (the
// train and eval loss; an actor's reward and its EMA's), at most a few panels a row.
#include <string>
#include <vector>

#include "metrics_file.h"

namespace dschat::plot {

struct Panel {
  std::string title;    // "sft: loss"
  std::string y_label;  // the tag, or the group's name when several tags share the panel
  std::vector<const Series*> curves;
  bool log_y = false;   // positive values spanning decades (perplexity from ~vocab size down to ~1)
};

struct Figure {
  std::string stage;
  std::vector<Panel> panels;
  std::vector<std::string> logged_once;  // "data/skipped_rows = 0 (step 0)": counters with no curve to draw
  int columns = 1, rows = 1;
};

// The group a tag belongs to: "eval/ema_reward" and "reward/mean" -> "reward", "train/loss" -> "loss",
// "eval/chosen_score" -> "score", "time/generation_s" -> "time".
std::string metric_group(const std::string& tag);

Figure lay_out_figure(const StageHistory& history);

}  // namespace dschat::plot
