#pragma once
// What a running stage reports: scalar metrics (the host writes TensorBoard event files and JSONL) and a live
// progress line with step, loss, rate and ETA.
#include <cstdint>
#include <map>
#include <string>

namespace dschat {

class MetricsSink {
 public:
  virtual ~MetricsSink() = default;
  // tag like "train/loss", "eval/accuracy"; step is the stage's optimizer step.
  virtual void scalar(const std::string& tag, double value, int64_t step) = 0;
  virtual void flush() = 0;
  // A stage (re)starting at `step` (-1: from scratch) drops what an interrupted attempt recorded after it, so
  // the history holds each step once; a row the new attempt writes again for a kept (tag, step) is ignored.
  virtual void truncate_after(int64_t /*step*/) {}
};

class Progress {
 public:
  virtual ~Progress() = default;
  virtual void start(const std::string& label, int64_t total_steps) = 0;
  // `shown` values are printed on the line, e.g. {"loss", 2.31}; `items` counts samples/tokens for the rate.
  virtual void update(int64_t step, const std::map<std::string, double>& shown, int64_t items = 0) = 0;
  virtual void finish() = 0;
};

}  // namespace dschat
