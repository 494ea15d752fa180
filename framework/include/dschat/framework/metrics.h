#pragma once
// Where a stage's metrics go: TensorBoard event files (readable by TensorBoard without TensorFlow) and a JSONL
// log beside them; and the live progress line on stderr.
#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>

#include "dschat/sdk/metrics.h"

namespace dschat {

// CRC-32C (Castagnoli), and TFRecord's masked form of it.
uint32_t crc32c(std::string_view bytes, uint32_t crc = 0);
uint32_t masked_crc32c(std::string_view bytes);

// A TensorBoard event file: TFRecord framing of hand-encoded tensorflow.Event protobufs. The first record is
// file_version "brain.Event:2"; each scalar is an Event with a Summary holding one simple_value.
class EventFileWriter {
 public:
  // Creates dir/events.out.tfevents.<unix seconds>.<host>.
  explicit EventFileWriter(const std::filesystem::path& dir);
  void scalar(const std::string& tag, float value, int64_t step, double wall_time);
  void flush();
  const std::filesystem::path& file() const { return file_; }

  // Exposed for tests: one Event's protobuf bytes and one TFRecord.
  static std::string encode_event(double wall_time, int64_t step, std::string_view file_version,
                                  std::string_view tag, std::optional<float> value);
  static std::string frame_record(std::string_view data);

 private:
  void write_record(std::string_view data);
  std::filesystem::path file_;
  std::ofstream out_;
};

// A stage's metrics: <stage_dir>/tensorboard/events.out.tfevents.* and <stage_dir>/metrics.jsonl
// ({"step","tag","value","time"} per line). Appends, so a resumed stage keeps its earlier history;
// truncate_after() cuts it back to the resumed step and rewrites the TensorBoard events as one file from the
// kept rows, so TensorBoard shows one run without repeated steps.
class StageMetrics : public MetricsSink {
 public:
  explicit StageMetrics(const std::filesystem::path& stage_dir);
  void scalar(const std::string& tag, double value, int64_t step) override;
  void flush() override;
  void truncate_after(int64_t step) override;

 private:
  std::filesystem::path dir_;
  std::unique_ptr<EventFileWriter> events_;
  std::ofstream jsonl_;
  std::set<std::pair<std::string, int64_t>> kept_;  // (tag, step) of the rows kept by truncate_after
};

// The live line: "label step/total  k v ...  rate items/s  ETA". On a terminal it rewrites itself with '\r';
// otherwise (a log file, CI) it prints a plain line at most every `interval_s` seconds.
class ConsoleProgress : public Progress {
 public:
  // Without `out`, writes to std::cerr and asks isatty(stderr) unless `tty` says.
  explicit ConsoleProgress(std::ostream* out = nullptr, std::optional<bool> tty = std::nullopt,
                           double interval_s = 10.0);
  void start(const std::string& label, int64_t total_steps) override;
  void update(int64_t step, const std::map<std::string, double>& shown, int64_t items = 0) override;
  void finish() override;

  // The text of one line (no '\r' or newline), given the elapsed seconds.
  std::string line(double elapsed_s) const;

 private:
  using Clock = std::chrono::steady_clock;
  void emit(bool force);
  std::ostream* out_;
  bool tty_;
  double interval_s_;
  std::string label_;
  int64_t total_ = 0, step_ = 0, items_ = 0;
  std::map<std::string, double> shown_;
  Clock::time_point start_, last_print_;
  bool printed_ = false, active_ = false;
  size_t last_width_ = 0;
};

// "1h02m", "3m05s", "42s".
std::string format_duration(double seconds);

}  // namespace dschat
