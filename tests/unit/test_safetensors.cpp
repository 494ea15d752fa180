// safetensors reader/writer: round trips, interop with the Python safetensors package, and every bad-input case.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/safetensors.h"

namespace st = dschat::safetensors;
namespace fs = std::filesystem;

namespace {

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / fmt::format("dschat-safetensors-{}-{}", ::getpid(), test->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file made of an 8-byte little-endian length, `header` verbatim, and `data` bytes.
  fs::path write_raw(const std::string& name, const std::string& header, const std::string& data = "",
                     std::optional<uint64_t> length = std::nullopt) {
    fs::path p = dir_ / name;
    std::ofstream out(p, std::ios::binary);
    uint64_t n = length ? *length : header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << data;
    return p;
  }

  // Opening `p` must fail with a SafetensorsError naming the file and containing every one of `parts`.
  static void expect_error(const fs::path& p, std::initializer_list<std::string> parts) {
    try {
      st::File::open(p);
      ADD_FAILURE() << "opening " << p << " should have failed";
    } catch (const st::SafetensorsError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(p.string()), std::string::npos) << "message does not name the file: " << msg;
      for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
    }
  }

  fs::path dir_;
};

// Bit-exact comparison, so NaN payloads, -0 and subnormals count.
void expect_same_bits(const at::Tensor& a, const at::Tensor& b, const std::string& name) {
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << name;
  ASSERT_EQ(a.sizes(), b.sizes()) << name;
  at::Tensor ca = a.contiguous(), cb = b.contiguous();
  ASSERT_EQ(std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()), 0) << name;
}

std::vector<std::pair<std::string, at::Tensor>> every_dtype() {
  at::manual_seed(7);
  auto f = at::randn({3, 5});
  // Values that only survive a bit-exact writer: infinities, signed zero, NaN, a subnormal, rounding cases.
  auto specials = at::tensor({INFINITY, -INFINITY, -0.0f, NAN, 1e-40f, 1.0f / 3.0f, 65504.0f, 3.0e38f});
  return {
      {"f64", f.to(at::kDouble)},
      {"f32", f},
      {"f16", f.to(at::kHalf)},
      {"bf16", f.to(at::kBFloat16)},
      {"f16.specials", specials.to(at::kHalf)},
      {"bf16.specials", specials.to(at::kBFloat16)},
      {"f8e4m3", f.to(at::kFloat8_e4m3fn)},
      {"f8e5m2", f.to(at::kFloat8_e5m2)},
      {"i64", at::randint(-(1LL << 40), 1LL << 40, {4}, at::kLong)},
      {"i32", at::randint(-100000, 100000, {2, 2}, at::kInt)},
      {"i16", at::randint(-30000, 30000, {7}, at::kShort)},
      {"i8", at::randint(-128, 127, {3}, at::kChar)},
      {"u8", at::randint(0, 255, {5}, at::kByte)},
      {"u16", at::tensor({0, 1, 40000, 65535}, at::kInt).to(at::kUInt16)},
      {"bool", at::rand({2, 3}) > 0.5},
      {"scalar", at::tensor(2.5f).reshape({})},
      {"empty", at::zeros({0, 4})},
      {"non_contiguous", f.t()},
  };
}

TEST_F(Safetensors, SingleFileRoundTripEveryDtypeBitExact) {
  auto tensors = every_dtype();
  fs::path p = dir_ / "all.safetensors";
  st::save_file(p, tensors, {{"format", "pt"}, {"note", "dschat"}});

  // Header length and layout as the format requires.
  std::ifstream in(p, std::ios::binary);
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);

  auto file = st::File::open(p);
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "dschat"}}));
  ASSERT_EQ(file->tensors().size(), tensors.size());
  uint64_t offset = 0;
  size_t previous_size = 8;
  for (const auto& info : file->tensors()) {
    EXPECT_EQ(info.begin, offset) << info.name << ": tensors() is in data order";
    offset = info.end;
    EXPECT_EQ(info.file, p);
    // Largest elements first keeps every tensor aligned, so every view is zero-copy.
    size_t size = c10::elementSize(info.dtype);
    EXPECT_LE(size, previous_size) << info.name;
    previous_size = size;
    at::Tensor view = file->tensor(info.name);
    if (view.numel() > 0) EXPECT_EQ(view.data_ptr(), file->tensor(info.name).data_ptr()) << info.name;
  }
  for (const auto& [name, expected] : tensors) expect_same_bits(file->tensor(name), expected, name);
  EXPECT_EQ(file->file_size(), 8 + header_len + offset);
  EXPECT_EQ(file->tensor("scalar").dim(), 0);
}

TEST_F(Safetensors, ViewsAreZeroCopyAndOutliveTheFile) {
  fs::path p = dir_ / "v.safetensors";
  auto w = at::arange(64, at::kFloat).reshape({8, 8});
  st::save_file(p, {{"w", w}});
  auto file = st::File::open(p);
  at::Tensor a = file->tensor("w"), b = file->tensor("w");
  EXPECT_EQ(a.data_ptr(), b.data_ptr()) << "both views share the mapping";
  file.reset();
  EXPECT_TRUE(at::equal(a, w)) << "the view keeps the mapping alive";
  EXPECT_TRUE(at::equal(a.clone().add_(1), w + 1)) << "a clone is writable";
}

TEST_F(Safetensors, MisalignedTensorIsReadAsAnAlignedCopy) {
  // Legal but never written by the reference writers: an F32 tensor starting at an odd offset.
  float values[2] = {1.5f, -2.25f};
  std::string data = "x" + std::string(reinterpret_cast<const char*>(values), sizeof values);
  std::string header = R"({"b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                          "f": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  auto file = st::File::open(write_raw("odd.safetensors", header, data));
  at::Tensor f = file->tensor("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data_ptr()) % alignof(float), 0u);
  EXPECT_TRUE(at::equal(f, at::tensor({1.5f, -2.25f})));
  EXPECT_EQ(file->tensor("b").item<uint8_t>(), 'x');
}

TEST_F(Safetensors, ShardedRoundTripAndStaleFilesRemoved) {
  auto tensors = every_dtype();
  st::save_checkpoint(dir_, tensors, /*max_shard_bytes=*/64);
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors"));
  ASSERT_TRUE(fs::exists(dir_ / "model.safetensors.index.json"));

  std::ifstream in(dir_ / "model.safetensors.index.json");
  auto index = nlohmann::json::parse(in);
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), tensors.size());

  auto reader = st::CheckpointReader::open(dir_);
  EXPECT_GT(reader.files().size(), 2u);
  for (const auto& file : reader.files()) {
    EXPECT_EQ(file->metadata().at("format"), "pt");
    uint64_t bytes = 0;
    for (const auto& info : file->tensors()) bytes += info.end - info.begin;
    EXPECT_TRUE(bytes <= 64 || file->tensors().size() == 1) << file->path() << " exceeds the shard limit";
  }
  EXPECT_EQ(reader.names().size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    EXPECT_TRUE(reader.contains(name));
    expect_same_bits(reader.load(name), expected, name);
  }
  const auto& info = reader.info("bf16");
  EXPECT_EQ(index["weight_map"]["bf16"].get<std::string>(), info.file.filename().string());

  // Saving again as one file leaves nothing of the sharded layout behind.
  size_t shards = reader.files().size();
  st::save_checkpoint(dir_, tensors);
  EXPECT_TRUE(fs::exists(dir_ / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir_ / fmt::format("model-00001-of-{:05d}.safetensors", shards)));
  auto single = st::CheckpointReader::open(dir_);
  EXPECT_EQ(single.files().size(), 1u);
  for (const auto& [name, expected] : tensors) expect_same_bits(single.load(name), expected, name);
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << "temporary left behind";
}

TEST_F(Safetensors, ShardingPacksInOrderAndGivesOversizedTensorsTheirOwnShard) {
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"a", at::ones({10})}, {"b", at::ones({10})}, {"big", at::ones({100})}, {"c", at::ones({5})}};
  st::save_checkpoint(dir_, tensors, /*max_shard_bytes=*/80);  // a+b = 80 bytes fit; big = 400 alone; c alone
  auto reader = st::CheckpointReader::open(dir_);
  EXPECT_EQ(reader.info("a").file.filename(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(reader.info("b").file.filename(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(reader.info("big").file.filename(), "model-00002-of-00003.safetensors");
  EXPECT_EQ(reader.info("c").file.filename(), "model-00003-of-00003.safetensors");
}

TEST_F(Safetensors, ReaderAcceptsAFilePathAndConvertsOnRequest) {
  fs::path p = dir_ / "weights.safetensors";
  auto w = at::randn({4, 4}).to(at::kBFloat16);
  st::save_file(p, {{"w", w}});
  auto reader = st::CheckpointReader::open(p);
  EXPECT_EQ(reader.names(), std::vector<std::string>{"w"});
  at::Tensor same = reader.load("w", at::kBFloat16);
  EXPECT_EQ(same.data_ptr(), reader.load("w").data_ptr()) << "no copy when the dtype already matches";
  at::Tensor f32 = reader.load("w", at::kFloat);
  EXPECT_EQ(f32.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(f32, w.to(at::kFloat)));
  try {
    reader.load("missing");
    ADD_FAILURE();
  } catch (const st::SafetensorsError& e) {
    EXPECT_NE(std::string(e.what()).find("'missing'"), std::string::npos) << e.what();
  }
}

// ---- interop with the Python safetensors package ----

// Runs a Python script; returns its stdout, failing the test on a non-zero exit.
std::string run_python(const fs::path& dir, const std::string& script, const std::string& args) {
  fs::path file = dir / "script.py";
  std::ofstream(file) << script;
  std::string cmd = fmt::format("'{}' '{}' {} 2>&1", DSCHAT_TEST_PYTHON, file.string(), args);
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return "popen failed";
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  int status = ::pclose(pipe);
  EXPECT_EQ(status, 0) << cmd << "\n" << out;
  return out;
}

// One line per tensor: "name dtype shape hex-of-bytes", the same format the Python side prints.
std::string describe(const std::string& name, const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  std::string hex;
  const auto* bytes = static_cast<const unsigned char*>(c.data_ptr());
  for (size_t i = 0; i < c.nbytes(); ++i) hex += fmt::format("{:02x}", bytes[i]);
  std::string shape;
  for (auto d : c.sizes()) shape += fmt::format("{},", d);
  return fmt::format("{} {} [{}] {}\n", name, *st::dtype_name(c.scalar_type()), shape, hex);
}

constexpr const char* kDescribePy = R"(
import sys, json, torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
         torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
         torch.bool: "BOOL"}
def describe(name, t):
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return f"{name} {NAMES[t.dtype]} [{''.join(f'{d},' for d in t.shape)}] {raw.hex()}"
)";

TEST_F(Safetensors, ReadsWhatPythonWrote) {
  std::string script = std::string(kDescribePy) + R"(
torch.manual_seed(0)
x = torch.randn(3, 4)
tensors = {"w.f32": x, "w.f16": x.half(), "w.bf16": x.bfloat16(), "w.f64": x.double(),
           "ids": torch.arange(-5, 5), "i32": torch.tensor([1, -2], dtype=torch.int32),
           "mask": x > 0, "bytes": torch.arange(6, dtype=torch.uint8).reshape(2, 3),
           "scalar": torch.tensor(1.5), "empty": torch.zeros(0, 2)}
save_file(tensors, sys.argv[1], metadata={"format": "pt", "who": "python"})
for name in sorted(tensors): print(describe(name, tensors[name]))
)";
  fs::path p = dir_ / "from_python.safetensors";
  std::string expected = run_python(dir_, script, "'" + p.string() + "'");
  auto file = st::File::open(p);
  EXPECT_EQ(file->metadata().at("who"), "python");
  std::string got;
  auto reader = st::CheckpointReader::open(p);
  for (const auto& name : reader.names()) got += describe(name, reader.load(name));
  EXPECT_EQ(got, expected);
  EXPECT_EQ(reader.names().size(), 10u);
}

TEST_F(Safetensors, PythonReadsWhatWeWrote) {
  auto all = every_dtype();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& [name, t] : all)  // the Python side's table: the dtypes torch and safetensors both name the same way
    if (name.rfind("f8", 0) != 0 && name != "u16") tensors.emplace_back(name, t);
  st::save_file(dir_ / "single.safetensors", tensors, {{"format", "pt"}, {"k", "v"}});
  st::save_checkpoint(dir_ / "sharded", tensors, /*max_shard_bytes=*/100);

  std::string script = std::string(kDescribePy) + R"(
import os
single = load_file(sys.argv[1])
with safe_open(sys.argv[1], "pt") as f: assert f.metadata() == {"format": "pt", "k": "v"}, f.metadata()
index = json.load(open(os.path.join(sys.argv[2], "model.safetensors.index.json")))
sharded = {}
for shard in sorted(set(index["weight_map"].values())):
    part = load_file(os.path.join(sys.argv[2], shard))
    assert all(index["weight_map"][k] == shard for k in part), shard
    sharded.update(part)
assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sharded.values())
assert sharded.keys() == single.keys()
for name in sorted(single):
    assert describe(name, single[name]) == describe(name, sharded[name]), name
    print(describe(name, single[name]))
)";
  std::string got = run_python(dir_, script, fmt::format("'{}' '{}'", (dir_ / "single.safetensors").string(),
                                                         (dir_ / "sharded").string()));
  std::map<std::string, at::Tensor> sorted(tensors.begin(), tensors.end());
  std::string expected;
  for (const auto& [name, t] : sorted) expected += describe(name, t);
  EXPECT_EQ(got, expected);
}

// ---- bad input: each case is its own clear error naming the file and the problem ----

TEST_F(Safetensors, RejectsFileShorterThanTheLength) {
  fs::path p = dir_ / "short.safetensors";
  std::ofstream(p, std::ios::binary) << "abc";
  expect_error(p, {"3 bytes", "shorter than the 8-byte header length"});
  fs::path empty = dir_ / "empty.safetensors";
  std::ofstream(empty, std::ios::binary).flush();
  expect_error(empty, {"0 bytes"});
}

TEST_F(Safetensors, RejectsMissingFileAndFolder) {
  expect_error(dir_ / "nope.safetensors", {"cannot open", "No such file"});
  expect_error(dir_, {"not a regular file"});
}

TEST_F(Safetensors, RejectsHeaderLengthPastTheEnd) {
  expect_error(write_raw("past.safetensors", "{}", "", 1000), {"header length 1000 runs past the end of the file"});
}

TEST_F(Safetensors, RejectsAbsurdHeaderLength) {
  expect_error(write_raw("huge.safetensors", "{}", "", 1ull << 40), {"header length 1099511627776 is absurdly large"});
  expect_error(write_raw("max.safetensors", "{}", "", ~0ull), {"absurdly large"});
}

TEST_F(Safetensors, RejectsHeaderThatIsNotJson) {
  expect_error(write_raw("bad.safetensors", R"({"w": {"dtype": "F32",)"), {"header is not valid JSON"});
  expect_error(write_raw("zero.safetensors", ""), {"header is not valid JSON"});
}

TEST_F(Safetensors, RejectsHeaderThatIsNotAnObject) {
  expect_error(write_raw("array.safetensors", "[1, 2]  "), {"not an object", "array"});
}

TEST_F(Safetensors, RejectsEntryMissingAField) {
  expect_error(write_raw("a.safetensors", R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", "abcd"),
               {"tensor 'w'", "missing \"dtype\""});
  expect_error(write_raw("b.safetensors", R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})", "abcd"),
               {"tensor 'w'", "missing \"shape\""});
  expect_error(write_raw("c.safetensors", R"({"w": {"dtype": "F32", "shape": [1]}})", "abcd"),
               {"tensor 'w'", "missing \"data_offsets\""});
  expect_error(write_raw("d.safetensors", R"({"w": 3})"), {"tensor 'w'", "entry must be an object"});
}

TEST_F(Safetensors, RejectsFieldsOfTheWrongType) {
  expect_error(write_raw("a.safetensors", R"({"w": {"dtype": 1, "shape": [1], "data_offsets": [0, 4]}})", "abcd"),
               {"tensor 'w'", "dtype must be a string"});
  expect_error(write_raw("b.safetensors", R"({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", "abcd"),
               {"tensor 'w'", "shape must be an array of integers"});
  expect_error(write_raw("c.safetensors", R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", "abcd"),
               {"tensor 'w'", "shape must be an array of integers"});
  expect_error(write_raw("d.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]}})", "abcd"),
               {"tensor 'w'", "data_offsets must be two non-negative integers"});
}

TEST_F(Safetensors, RejectsUnknownDtype) {
  expect_error(write_raw("a.safetensors", R"({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", "abcd"),
               {"tensor 'w'", "unknown dtype \"F33\""});
}

TEST_F(Safetensors, RejectsNegativeShape) {
  expect_error(write_raw("a.safetensors", R"({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 0]}})"),
               {"tensor 'w'", "negative dimension"});
}

TEST_F(Safetensors, RejectsDataOffsetsThatAreNotAnOrderedPair) {
  expect_error(write_raw("a.safetensors", R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0]}})", "a"),
               {"tensor 'w'", "data_offsets must be [begin, end]"});
  expect_error(write_raw("b.safetensors", R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}})", "a"),
               {"tensor 'w'", "data_offsets must be [begin, end]"});
  expect_error(write_raw("c.safetensors", R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [2, 1]}})", "abc"),
               {"tensor 'w'", "data_offsets [2, 1) has begin > end"});
  expect_error(write_raw("d.safetensors", R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}})", "a"),
               {"tensor 'w'", "data_offsets must be two non-negative integers"});
}

TEST_F(Safetensors, RejectsEndPastTheDataSection) {
  expect_error(write_raw("a.safetensors", R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", "12345678"),
               {"tensor 'w'", "data_offsets [0, 16) end past the data section, which is 8 bytes"});
  // Offsets near 2^64 must not wrap around into something that looks in bounds.
  expect_error(write_raw("b.safetensors",
                         R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [18446744073709551615, 18446744073709551615]}})",
                         "a"),
               {"tensor 'w'", "end past the data section"});
}

TEST_F(Safetensors, RejectsByteCountThatDoesNotMatchTheShape) {
  expect_error(write_raw("a.safetensors", R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", "12345678"),
               {"tensor 'w'", "hold 8 bytes but F32 of shape [3] needs 12", "byte count does not match"});
  // A shape whose element count overflows 64 bits must not pass as a small tensor.
  expect_error(write_raw("b.safetensors",
                         R"({"w": {"dtype": "U8", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 0]}})"),
               {"tensor 'w'", "more than 2^64"});
}

TEST_F(Safetensors, RejectsOverlappingTensors) {
  expect_error(write_raw("a.safetensors",
                         R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                             "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})",
                         "123456"),
               {"tensors 'a' [0, 4) and 'b' [2, 6) overlap"});
}

TEST_F(Safetensors, RejectsHolesInTheDataSection) {
  expect_error(write_raw("a.safetensors",
                         R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                             "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}})",
                         "123456"),
               {"hole in the data section", "bytes [2, 4) (before tensor 'b')"});
  expect_error(write_raw("b.safetensors", R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})", "1234"),
               {"hole in the data section", "last bytes [2, 4)"});
}

TEST_F(Safetensors, RejectsDuplicateNames) {
  expect_error(write_raw("a.safetensors",
                         R"({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                             "w": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})",
                         "1234"),
               {"tensor 'w' more than once", "duplicate"});
}

TEST_F(Safetensors, RejectsMetadataThatIsNotAStringMap) {
  expect_error(write_raw("a.safetensors", R"({"__metadata__": {"format": 1}})"),
               {"__metadata__ must map strings to strings", "\"format\""});
  expect_error(write_raw("b.safetensors", R"({"__metadata__": ["pt"]})"), {"__metadata__ must be an object"});
}

TEST_F(Safetensors, AcceptsAnEmptyFileAndMetadataOnly) {
  auto file = st::File::open(write_raw("a.safetensors", R"({"__metadata__": {"format": "pt"}})"));
  EXPECT_TRUE(file->tensors().empty());
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_FALSE(file->contains("w"));
  try {
    file->info("w");
    ADD_FAILURE();
  } catch (const st::SafetensorsError& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'w'"), std::string::npos) << e.what();
  }
}

// Random corruption (byte flips in the header, truncation) must give either a valid file whose every tensor
// reads back, or a SafetensorsError - never another exception type or an out-of-bounds read.
TEST_F(Safetensors, CorruptedFilesFailCleanly) {
  fs::path good = dir_ / "good.safetensors";
  st::save_file(good, {{"a", at::randn({3, 4})}, {"b", at::ones({5}, at::kBFloat16)}, {"c", at::arange(3)}},
                {{"format", "pt"}});
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::mt19937 rng(1234);
  fs::path bad = dir_ / "bad.safetensors";
  int opened = 0, rejected = 0;
  for (int i = 0; i < 500; ++i) {
    std::string mutated = bytes;
    if (i % 3 == 0) {
      mutated.resize(rng() % mutated.size());
    } else {
      for (int k = 0, n = 1 + rng() % 3; k < n; ++k) {
        size_t header_end = 8 + static_cast<uint8_t>(bytes[0]) + (static_cast<uint8_t>(bytes[1]) << 8);
        mutated[rng() % header_end] = static_cast<char>("0123456789,:[]{}\"-"[rng() % 18] ^ (i % 5 == 0 ? rng() : 0));
      }
    }
    std::ofstream(bad, std::ios::binary | std::ios::trunc) << mutated;
    try {
      auto file = st::File::open(bad);
      for (const auto& info : file->tensors()) file->tensor(info.name).to(at::kDouble).sum().item<double>();
      ++opened;
    } catch (const st::SafetensorsError& e) {
      ++rejected;
      ASSERT_NE(std::string(e.what()).find(bad.string()), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      FAIL() << "mutation " << i << " escaped as a non-safetensors error: " << e.what();
    }
  }
  EXPECT_GT(rejected, 300) << opened;
  EXPECT_GT(opened, 0);  // some flips land in harmless places (whitespace, metadata text)
}

TEST_F(Safetensors, MissingShardNamesTheShardAndTheIndex) {
  st::save_checkpoint(dir_, {{"a", at::ones({8})}, {"b", at::ones({8})}}, /*max_shard_bytes=*/32);
  fs::remove(dir_ / "model-00002-of-00002.safetensors");
  try {
    st::CheckpointReader::open(dir_);
    ADD_FAILURE();
  } catch (const st::SafetensorsError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("shard model-00002-of-00002.safetensors (holding tensor 'b') is missing"), std::string::npos)
        << msg;
  }
}

TEST_F(Safetensors, RejectsIndexThatDoesNotMatchItsShards) {
  st::save_checkpoint(dir_, {{"a", at::ones({8})}, {"b", at::ones({8})}}, /*max_shard_bytes=*/32);
  auto expect_index_error = [&](const std::string& index, const std::string& part) {
    std::ofstream(dir_ / "model.safetensors.index.json") << index;
    try {
      st::CheckpointReader::open(dir_);
      ADD_FAILURE() << index;
    } catch (const st::SafetensorsError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find((dir_ / "model.safetensors.index.json").string()), std::string::npos) << msg;
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
    }
  };
  expect_index_error(R"({"weight_map": {"b": "model-00001-of-00002.safetensors"}})",
                     "puts tensor 'b' in shard model-00001-of-00002.safetensors, which has no such tensor");
  expect_index_error(R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})", "is not a file name");
  expect_index_error(R"({"weight_map": {"a": 1}})", "must be a shard file name");
  expect_index_error(R"({"metadata": {}})", "\"weight_map\" object");
  expect_index_error(R"({"weight_map": )", "index is not valid JSON");
}

TEST_F(Safetensors, FolderWithoutWeightsIsAnError) {
  try {
    st::CheckpointReader::open(dir_);
    ADD_FAILURE();
  } catch (const st::SafetensorsError& e) {
    EXPECT_NE(std::string(e.what()).find("neither model.safetensors nor model.safetensors.index.json"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(Safetensors, WriterRefusesWhatTheFormatCannotHold) {
  auto expect_write_error = [&](const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& part) {
    fs::path p = dir_ / "out.safetensors";
    try {
      st::save_file(p, tensors);
      ADD_FAILURE() << part;
    } catch (const st::SafetensorsError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
    }
    EXPECT_FALSE(fs::exists(p));
  };
  expect_write_error({{"c", at::ones({2}, at::kComplexFloat)}}, "tensor 'c' has dtype ComplexFloat");
  expect_write_error({{"w", at::ones({2})}, {"w", at::ones({2})}}, "tensor 'w' given twice");
  expect_write_error({{"__metadata__", at::ones({2})}}, "__metadata__");
  expect_write_error({{"u", at::Tensor()}}, "tensor 'u' is undefined");
  EXPECT_THROW(st::save_file(dir_ / "no-such-folder" / "x.safetensors", {{"w", at::ones({1})}}), st::SafetensorsError);
}

}  // namespace
