// The parsers of untrusted files under hostile input: nesting far beyond any real file is refused with a clear
// error before it can overflow the stack, and every input the fuzzers (tests/fuzz/, tools/fuzz.sh) found is
// replayed through the same calls the fuzz target makes (tests/fuzz/exercise.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "../../sdk/src/nesting_limits.h"
#include "../fuzz/exercise.h"
#include "test_support.h"

namespace fs = std::filesystem;
using dschat::testing::error_of;

namespace {

constexpr int kDeep = 100'000;

std::string deep_array(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

std::string safetensors_with_header(const std::string& header) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<fs::path> regressions(const std::string& target) {
  std::vector<fs::path> files;
  auto dir = fs::path(DSCHAT_SOURCE_DIR) / "tests/data/fuzz-regressions" / target;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

// A 50,000-part dotted key: a.a.a...a
std::string dotted(int parts) {
  std::string key = "a";
  for (int i = 1; i < parts; ++i) key += ".a";
  return key;
}

}  // namespace

// ---- JSON: 100,000 nested arrays where a value belongs ------------------------------------------------------

TEST(ParserLimits, DeepJsonInASafetensorsHeaderIsRefused) {
  std::string header = R"({"t": {"dtype": "F32", "shape": )" + deep_array(kDeep) + R"(, "data_offsets": [0, 0]}})";
  auto bytes = safetensors_with_header(header);
  auto path = dschat::fuzz::write_input("deep.safetensors", bytes);
  std::string error = error_of([&] { dschat::safetensors::File::open(path); });
  EXPECT_NE(error.find(path.string()), std::string::npos) << error;
  EXPECT_NE(error.find("header nests deeper than 256 levels"), std::string::npos) << error;
  EXPECT_FALSE(dschat::fuzz::exercise_safetensors(bytes));
  // 256 levels (two objects and 254 arrays) is still a (wrong-typed) header, reported as such.
  auto ok = safetensors_with_header(R"({"t": {"dtype": "F32", "shape": )" + deep_array(254) +
                                    R"(, "data_offsets": [0, 0]}})");
  error = error_of([&] { dschat::safetensors::File::open(dschat::fuzz::write_input("ok.safetensors", ok)); });
  EXPECT_NE(error.find("shape must be an array of integers"), std::string::npos) << error;
}

TEST(ParserLimits, DeepJsonInATokenizerJsonIsRefused) {
  std::string text = R"({"version": "1.0", "model": {"type": "BPE", "vocab": )" + deep_array(kDeep) + "}}";
  auto path = dschat::fuzz::write_input("tokenizer.json", text);
  std::string error = error_of([&] { dschat::Tokenizer::from_file(path); });
  EXPECT_NE(error.find(path.string()), std::string::npos) << error;
  EXPECT_NE(error.find("JSON nests deeper than 256 levels (line 1, column"), std::string::npos) << error;
  EXPECT_FALSE(dschat::fuzz::exercise_tokenizer_json(text));
}

TEST(ParserLimits, DeepJsonInAJsonlRowIsRefusedOrSkipped) {
  std::string rows = "{\"prompt\": \"p\", \"response\": \"r\"}\n{\"prompt\": " + deep_array(kDeep) +
                     ", \"response\": \"r\"}\n";
  dschat::DatasetSpec spec;
  spec.path = dschat::fuzz::write_input("rows.jsonl", rows);
  spec.schema = "sft";
  int64_t skipped = 0;
  std::string error = error_of([&] { dschat::parse_dataset(spec, 0, skipped); });
  EXPECT_NE(error.find(spec.path.string() + ":2: JSON nests deeper than 256 levels at column 267"), std::string::npos)
      << error;
  // (the row's object is level 1; its 256th '[', at column 12 + 255, is level 257)
  spec.skip_errors = true;  // a DataError like any malformed row: skippable
  EXPECT_EQ(dschat::parse_dataset(spec, 0, skipped).size(), 1u);
  EXPECT_EQ(skipped, 1);
}

TEST(ParserLimits, AnOverflowingNumberInAJsonlRowIsADataError) {
  // nlohmann reports 1e999 as out_of_range, not parse_error: it used to escape the DataError handling.
  dschat::DatasetSpec spec;
  spec.path = dschat::fuzz::write_input("rows.jsonl", "{\"prompt\": \"p\", \"response\": \"r\"}\n{\"prompt\": 1e999}\n");
  spec.schema = "sft";
  int64_t skipped = 0;
  EXPECT_THROW(dschat::parse_dataset(spec, 0, skipped), dschat::DataError);
  spec.skip_errors = true;
  EXPECT_EQ(dschat::parse_dataset(spec, 0, skipped).size(), 1u);
}

TEST(ParserLimits, AnOverflowingNumberInATokenizerJsonIsATokenizerError) {
  auto path = dschat::fuzz::write_input("tokenizer.json", R"({"model": {"dropout": 1e999}})");
  std::string error = error_of([&] { dschat::Tokenizer::from_file(path); });
  EXPECT_THROW(dschat::Tokenizer::from_file(path), dschat::TokenizerError);
  EXPECT_NE(error.find("not valid JSON"), std::string::npos) << error;
}

TEST(ParserLimits, DeepJsonInAConfigJsonIsRefused) {
  std::string text = "{\"model_type\": \"llama\",\n \"rope_scaling\": " + deep_array(kDeep) + "}";
  auto path = dschat::fuzz::write_input("config.json", text);
  std::string error = error_of([&] { dschat::read_hf_config(path); });
  EXPECT_NE(error.find(path.string() + ": invalid JSON: nests deeper than 256 levels (line 2, column"),
            std::string::npos)
      << error;
  EXPECT_FALSE(dschat::fuzz::exercise_hf_config(text));
}

// ---- TOML: 50,000-part dotted keys and headers, deeply nested arrays and inline tables -------------------

TEST(ParserLimits, ADottedKeyWith50000PartsIsRefusedBeforeToml) {
  std::string text = "# a pipeline\nname = \"x\"\n" + dotted(50'000) + " = 1\n";
  try {
    dschat::ConfigDocument::parse_string(text, "deep.toml", "/");
    FAIL() << "accepted";
  } catch (const dschat::ConfigError& e) {
    EXPECT_EQ(e.where().file, "deep.toml");
    EXPECT_EQ(e.where().line, 3);
    EXPECT_NE(std::string(e.what()).find("deep.toml:3:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("nesting deeper than 128 levels"), std::string::npos) << e.what();
  }
}

TEST(ParserLimits, ATableHeaderWith50000PartsIsRefusedInAFile) {
  auto dir = fs::temp_directory_path() / "dschat-test-parser-limits";
  fs::create_directories(dir);
  auto file = dir / "header.toml";
  std::ofstream(file) << "[model]\npath = \"m\"\n\n[" << dotted(50'000) << "]\nx = 1\n";
  try {
    dschat::ConfigDocument::parse_file(file);
    FAIL() << "accepted";
  } catch (const dschat::ConfigError& e) {
    EXPECT_EQ(e.where().file, file.string());
    EXPECT_EQ(e.where().line, 4);
    EXPECT_NE(std::string(e.what()).find(file.string() + ":4:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("nesting deeper than 128 levels"), std::string::npos) << e.what();
  }
  // Parsing a file still works, with locations naming it.
  std::ofstream(file) << "[model]\npath = \"m\"\nlora.rank = 8\n";
  auto doc = dschat::ConfigDocument::parse_file(file);
  EXPECT_EQ(doc->root().get_table("model").get_string("path"), "m");
  EXPECT_EQ(doc->root().get_table("model").location("path").file, file.string());
  EXPECT_EQ(doc->root().get_table("model").location("path").line, 2);
}

TEST(ParserLimits, DeeplyNestedInlineArraysAndTablesAreRefused) {
  for (const std::string& value : {std::string(50'000, '[') + std::string(50'000, ']'),
                                   [] {
                                     std::string s;
                                     for (int i = 0; i < 50'000; ++i) s += "{a = ";
                                     return s + "1" + std::string(50'000, '}');
                                   }(),
                                   [] {
                                     std::string s;
                                     for (int i = 0; i < 2'000; ++i) s += "[{" + dotted(20) + " = ";
                                     return s;
                                   }()}) {
    std::string error = error_of([&] { dschat::ConfigDocument::parse_string("x = " + value + "\n", "deep.toml", "/"); });
    EXPECT_NE(error.find("deep.toml:1:"), std::string::npos) << error.substr(0, 200);
    EXPECT_NE(error.find("nesting deeper than 128 levels"), std::string::npos) << error.substr(0, 200);
  }
}

TEST(ParserLimits, RealPipelineFilesAreWellWithinTheTomlLimit) {
  std::vector<fs::path> files;
  for (const char* dir : {"configs", "tests/data/pipelines"})
    for (const auto& e : fs::directory_iterator(fs::path(DSCHAT_SOURCE_DIR) / dir))
      if (e.path().extension() == ".toml") files.push_back(e.path());
  ASSERT_FALSE(files.empty());
  for (const auto& f : files) {
    EXPECT_FALSE(dschat::limits::toml_nesting_excess(read_bytes(f))) << f;
    EXPECT_FALSE(dschat::limits::toml_nesting_excess(read_bytes(f), 8)) << f;  // real files nest 4 deep at most
  }
  // Strings and comments do not count: dots and brackets inside them are not structure.
  std::string quoted = "a = \"" + std::string(1000, '[') + dotted(1000) + "\"\n# " + dotted(1000) +
                       "\nb = '''\n" + std::string(1000, '{') + "'''\n\"" + dotted(1000) + "\" = 1\n";
  EXPECT_NO_THROW(dschat::ConfigDocument::parse_string(quoted, "quoted.toml", "/"));
}

// ---- what the fuzzers found ----------------------------------------------------------------------------------

TEST(ParserLimits, FuzzRegressionsEndInACleanError) {
  struct Target {
    const char* name;
    bool (*exercise)(std::string_view);
  };
  size_t replayed = 0;
  for (const Target& t : {Target{"safetensors", dschat::fuzz::exercise_safetensors},
                          Target{"tokenizer_json", dschat::fuzz::exercise_tokenizer_json},
                          Target{"jsonl", dschat::fuzz::exercise_jsonl}, Target{"toml", dschat::fuzz::exercise_toml},
                          Target{"hf_config", dschat::fuzz::exercise_hf_config}}) {
    for (const auto& input : regressions(t.name)) {
      SCOPED_TRACE(input.string());
      // A crash fails the whole executable; another exception type fails here.
      EXPECT_NO_THROW((void)t.exercise(read_bytes(input)));
      ++replayed;
    }
  }
  EXPECT_GT(replayed, 0u);
}
