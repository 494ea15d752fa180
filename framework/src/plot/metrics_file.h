#pragma once
// What `dschat plot` reads: each stage's metrics.jsonl ({"step","tag","value","time"} a line, as StageMetrics
// writes it), as one step-ordered series per tag.
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace dschat::plot {

// Input `dschat plot` cannot draw from (exit 2); the text names the file, and the line where there is one.
struct PlotInputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Point {
  int64_t step;
  double value;
};

struct Series {
  std::string tag;            // e.g. "train/loss"
  std::vector<Point> points;  // finite values only, by step, one per step
};

struct StageHistory {
  std::string stage;
  std::filesystem::path file;
  std::vector<Series> series;     // in the order the tags first appear
  int64_t nonfinite_values = 0;   // nan/inf rows, which have no place on an axis
  double first_time = 0;          // when the stage logged its first row: orders the stages as they ran
  std::vector<std::string> warnings;
};

// RUN_DIR/metrics.jsonl (RUN_DIR is a stage folder) and RUN_DIR/<stage>/metrics.jsonl.
std::vector<std::filesystem::path> find_metrics_files(const std::filesystem::path& run_dir);

// Throws PlotInputError at the first malformed line; a torn last line (no newline: the stage was stopped while
// writing it) is skipped with a warning.
StageHistory read_stage_history(const std::filesystem::path& file, const std::string& stage);

}  // namespace dschat::plot
