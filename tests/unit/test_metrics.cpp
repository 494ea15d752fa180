// Metrics: TensorBoard event files that an independent reader (Python standard library only: TFRecord framing,
// CRC-32C, protobuf wire format) decodes back to what was written; metrics.jsonl; the progress line.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/framework/metrics.h"

using namespace dschat;
namespace fs = std::filesystem;

namespace {

// Reads every record, checks both masked CRC-32Cs, decodes Event{wall_time, step, file_version, summary{value{
// tag, simple_value}}} and prints one line per event: "version V" or "scalar STEP TAG VALUE".
constexpr const char* kReader = R"PY(
import struct, sys
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF
def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]; i += 1
        value |= (b & 0x7F) << shift; shift += 7
        if not b & 0x80: return value, i
def fields(buf):
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0: v, i = varint(buf, i)
        elif wire == 1: v = buf[i:i + 8]; i += 8
        elif wire == 5: v = buf[i:i + 4]; i += 4
        elif wire == 2:
            n, i = varint(buf, i); v = buf[i:i + n]; i += n
        else: raise ValueError("wire type %d" % wire)
        yield num, wire, v
data = open(sys.argv[1], "rb").read()
i = 0
while i < len(data):
    header = data[i:i + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked(header), "length crc"
    body = data[i + 12:i + 12 + length]
    assert struct.unpack("<I", data[i + 12 + length:i + 16 + length])[0] == masked(body), "data crc"
    i += 16 + length
    ev = {}
    for num, wire, v in fields(body):
        if num == 1: assert wire == 1; ev["wall_time"] = struct.unpack("<d", v)[0]
        elif num == 2: assert wire == 0; ev["step"] = v
        elif num == 3: ev["version"] = v.decode()
        elif num == 5:
            for n2, w2, value in fields(v):
                assert n2 == 1 and w2 == 2
                tv = dict((n3, (w3, x)) for n3, w3, x in fields(value))
                assert tv[2][0] == 5
                ev["tag"] = tv[1][1].decode(); ev["value"] = struct.unpack("<f", tv[2][1])[0]
    assert ev["wall_time"] > 1.5e9
    if "version" in ev: print("version", ev["version"])
    else: print("scalar", ev["step"], ev["tag"], "%.6g" % ev["value"])
)PY";

fs::path temp_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("dschat-test-metrics-" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST(Metrics, Crc32cKnownValues) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // the CRC-32C check value
  EXPECT_EQ(crc32c(""), 0u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);  // RFC 3720 B.4
}

TEST(Metrics, EventFileReadsBackWithAnIndependentDecoder) {
  auto dir = temp_dir("events");
  {
    StageMetrics metrics(dir);
    metrics.scalar("train/loss", 2.5, 1);
    metrics.scalar("train/loss", 1.25, 2);
    metrics.scalar("eval/accuracy", 0.75, 300000000000LL);  // a step that needs a long varint
    metrics.flush();
  }
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir / "tensorboard")) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename().string().rfind("events.out.tfevents.", 0), 0u);
  auto script = dir / "read_events.py";
  std::ofstream(script) << kReader;
  auto result = dschat::testing::run_command(std::string(DSCHAT_TEST_PYTHON) + " " + script.string() + " " +
                                             files[0].string());
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output,
            "version brain.Event:2\n"
            "scalar 1 train/loss 2.5\n"
            "scalar 2 train/loss 1.25\n"
            "scalar 300000000000 eval/accuracy 0.75\n");

  // A damaged record fails the reader's CRC check (the check is real).
  std::string bytes = read_text(files[0]);
  bytes[bytes.size() - 6] ^= 0x01;
  std::ofstream(files[0], std::ios::binary | std::ios::trunc) << bytes;
  auto damaged = dschat::testing::run_command(std::string(DSCHAT_TEST_PYTHON) + " " + script.string() + " " +
                                              files[0].string());
  EXPECT_NE(damaged.exit_code, 0);
  EXPECT_NE(damaged.output.find("crc"), std::string::npos) << damaged.output;

  // metrics.jsonl: one object per scalar, appended across runs.
  { StageMetrics again(dir); again.scalar("train/loss", 0.5, 3); }
  std::ifstream jsonl(dir / "metrics.jsonl");
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(jsonl, line);) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0]["tag"], "train/loss");
  EXPECT_EQ(rows[0]["step"], 1);
  EXPECT_DOUBLE_EQ(rows[1]["value"].get<double>(), 1.25);
  EXPECT_EQ(rows[3]["step"], 3);
  EXPECT_GT(rows[3]["time"].get<double>(), rows[0]["time"].get<double>() - 1);
  int event_files = 0;
  for (const auto& e : fs::directory_iterator(dir / "tensorboard")) event_files += 1, (void)e;
  EXPECT_EQ(event_files, 2);  // the second writer did not append to the first one's file
}

TEST(Metrics, ProgressLineOnALogAndOnATerminal) {
  std::ostringstream log;
  ConsoleProgress plain(&log, /*tty=*/false, /*interval_s=*/3600);
  plain.start("sft", 100);
  plain.update(1, {{"loss", 2.5}}, 16);
  plain.update(2, {{"loss", 2.25}}, 16);  // within the interval: not printed
  plain.finish();                         // the final state always is
  std::string text = log.str();
  EXPECT_EQ(text.find('\r'), std::string::npos);
  ASSERT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << text;
  EXPECT_NE(text.find("sft step 1/100  loss 2.5"), std::string::npos) << text;
  EXPECT_NE(text.find("sft step 2/100  loss 2.25"), std::string::npos) << text;
  EXPECT_NE(text.find("items/s"), std::string::npos) << text;
  EXPECT_NE(text.find("ETA "), std::string::npos) << text;

  std::ostringstream term;
  ConsoleProgress live(&term, /*tty=*/true);
  live.start("rm", 10);
  live.update(5, {{"loss", 0.7}, {"acc", 0.5}}, 8);
  live.finish();
  std::string shown = term.str();
  EXPECT_EQ(shown.rfind('\r', 0), 0u);  // rewrites its line
  EXPECT_EQ(shown.back(), '\n');        // and ends it when done
  EXPECT_NE(shown.find("rm step 5/10  acc 0.5  loss 0.7"), std::string::npos) << shown;

  EXPECT_EQ(format_duration(42), "42s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
}
