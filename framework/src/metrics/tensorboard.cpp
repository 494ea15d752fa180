// TensorBoard event files without TensorFlow: TFRecord framing + the few Event/Summary protobuf fields a scalar
// needs, encoded by hand (field numbers from tensorflow/core/util/event.proto and summary.proto).
#include <unistd.h>

#include <array>
#include <cmath>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/metrics.h"
#include "dschat/sdk/atomic_file.h"

namespace dschat {

namespace {

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected Castagnoli polynomial
    table[i] = c;
  }
  return table;
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
template <class T>
void put_fixed(std::string& out, T v) {  // little-endian, as protobuf and TFRecord want (x86/ARM are LE)
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out.append(bytes, sizeof(T));
}
void put_bytes_field(std::string& out, int field, std::string_view bytes) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view bytes, uint32_t crc) {
  static const auto table = make_crc_table();
  crc = ~crc;
  for (unsigned char b : bytes) crc = table[(crc ^ b) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(std::string_view bytes) {
  uint32_t crc = crc32c(bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string EventFileWriter::encode_event(double wall_time, int64_t step, std::string_view file_version,
                                          std::string_view tag, std::optional<float> value) {
  std::string event;
  put_varint(event, 1 << 3 | 1);  // wall_time: double
  put_fixed(event, wall_time);
  put_varint(event, 2 << 3 | 0);  // step: int64
  put_varint(event, static_cast<uint64_t>(step));
  if (!file_version.empty()) put_bytes_field(event, 3, file_version);
  if (value) {
    std::string summary_value;
    put_bytes_field(summary_value, 1, tag);  // Summary.Value.tag
    put_varint(summary_value, 2 << 3 | 5);   // Summary.Value.simple_value: float
    put_fixed(summary_value, *value);
    std::string summary;
    put_bytes_field(summary, 1, summary_value);  // Summary.value
    put_bytes_field(event, 5, summary);          // Event.summary
  }
  return event;
}

std::string EventFileWriter::frame_record(std::string_view data) {
  std::string record;
  uint64_t length = data.size();
  put_fixed(record, length);
  put_fixed(record, masked_crc32c(record));
  record.append(data);
  put_fixed(record, masked_crc32c(data));
  return record;
}

EventFileWriter::EventFileWriter(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  double now = now_seconds();
  file_ = dir / fmt::format("events.out.tfevents.{}.{}", static_cast<int64_t>(now), host);
  // A same-second restart must not append to another writer's file.
  for (int i = 1; std::filesystem::exists(file_); ++i)
    file_ = dir / fmt::format("events.out.tfevents.{}.{}.{}", static_cast<int64_t>(now), host, i);
  out_.open(file_, std::ios::binary | std::ios::out);
  if (!out_) throw std::runtime_error(fmt::format("cannot create {}", file_.string()));
  write_record(encode_event(now, 0, "brain.Event:2", "", std::nullopt));
  flush();
}

void EventFileWriter::write_record(std::string_view data) {
  out_ << frame_record(data);
  if (!out_) throw std::runtime_error(fmt::format("cannot write {}", file_.string()));
}

void EventFileWriter::scalar(const std::string& tag, float value, int64_t step, double wall_time) {
  write_record(encode_event(wall_time, step, "", tag, value));
}

void EventFileWriter::flush() { out_.flush(); }

StageMetrics::StageMetrics(const std::filesystem::path& stage_dir)
    : dir_(stage_dir), events_(std::make_unique<EventFileWriter>(stage_dir / "tensorboard")) {
  auto file = stage_dir / "metrics.jsonl";
  jsonl_.open(file, std::ios::app);
  if (!jsonl_) throw std::runtime_error(fmt::format("cannot open {}", file.string()));
}

void StageMetrics::truncate_after(int64_t step) {
  const auto file = dir_ / "metrics.jsonl";
  jsonl_.close();
  std::vector<nlohmann::json> kept;
  std::string text;
  {
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);) {
      nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (row.is_discarded() || !row.contains("step") || !row["step"].is_number_integer()) continue;  // torn line
      if (row["step"].get<int64_t>() > step) continue;
      kept_.insert({row.value("tag", ""), row["step"].get<int64_t>()});
      text += line + "\n";
      kept.push_back(std::move(row));
    }
  }
  write_file_atomic(file, text);
  // One event file holding the kept rows at their original times, in place of every earlier attempt's file.
  const auto tb = dir_ / "tensorboard";
  events_.reset();
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(tb, ec))
    if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0) std::filesystem::remove(entry.path());
  events_ = std::make_unique<EventFileWriter>(tb);
  for (const auto& row : kept) {
    const auto& v = row["value"];
    const double value = v.is_number() ? v.get<double>() : std::strtod(v.get<std::string>().c_str(), nullptr);
    events_->scalar(row.value("tag", ""), static_cast<float>(value), row["step"].get<int64_t>(),
                    row.value("time", 0.0));
  }
  events_->flush();
  jsonl_.open(file, std::ios::app);
  if (!jsonl_) throw std::runtime_error(fmt::format("cannot open {}", file.string()));
}

void StageMetrics::scalar(const std::string& tag, double value, int64_t step) {
  if (kept_.count({tag, step})) return;  // already in the kept history of an earlier attempt
  double now = now_seconds();
  events_->scalar(tag, static_cast<float>(value), step, now);
  nlohmann::json row{{"step", step}, {"tag", tag}, {"value", value}, {"time", now}};
  if (!std::isfinite(value)) row["value"] = fmt::format("{}", value);  // JSON has no nan/inf
  jsonl_ << row.dump() << '\n';
  // A log line is only useful if it survives the crash it might explain: flush each one (no fsync).
  jsonl_.flush();
  events_->flush();
}

void StageMetrics::flush() {
  jsonl_.flush();
  events_->flush();
}

}  // namespace dschat
