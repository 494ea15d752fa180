#pragma once
// What each fuzz target does with one input, shared with tests/unit/test_parser_limits.cpp, which replays the
// inputs the fuzzers found (tests/data/fuzz-regressions/<target>/) through exactly these calls in the normal
// suite. Each returns whether the parser accepted the input; the parser's own error type means "refused"; any
// other exception escapes, and a crash, sanitizer report or leak is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "dschat/framework/data.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/safetensors.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat::fuzz {

// The parsers read files: each input goes to one scratch file per process and name first.
inline std::filesystem::path write_input(const std::string& name, std::string_view bytes) {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("dschat-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  auto path = dir / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// File::open (the 8-byte length, the header JSON, every entry and the data coverage), then every tensor.
inline bool exercise_safetensors(std::string_view bytes) {
  try {
    auto file = safetensors::File::open(write_input("input.safetensors", bytes));
    for (const auto& info : file->tensors()) {
      at::Tensor t = file->tensor(info);
      // Touch every byte the header claims (a range past the mapping would fault here).
      const auto* p = static_cast<const unsigned char*>(t.data_ptr());
      unsigned sum = 0;
      for (size_t i = 0; p && i < t.nbytes(); ++i) sum += p[i];
      volatile unsigned sink = sum;
      (void)sink;
    }
    (void)file->metadata();
    return true;
  } catch (const safetensors::SafetensorsError&) {
    return false;
  }
}

// Tokenizer::from_file (JSON, then normalizer / pre-tokenizer / model / post-processor / decoder / added
// tokens), then an encode and decode so that a pipeline that loaded also runs.
inline bool exercise_tokenizer_json(std::string_view bytes) {
  try {
    auto tokenizer = Tokenizer::from_file(write_input("tokenizer.json", bytes));
    auto ids = tokenizer->encode("Hello world, \xc3\xa9t\xc3\xa9 <|endoftext|> <s> 12 34\n\tend  ");
    (void)tokenizer->decode(ids);
    (void)tokenizer->decode(ids, true);
    return true;
  } catch (const TokenizerError&) {
    return false;
  }
}

// A JSONL file: detect_schema, then parse_dataset under that schema (sft if none) or parse_text_file for
// text, with and without skip_errors.
inline bool exercise_jsonl(std::string_view bytes) {
  DatasetSpec spec;
  spec.path = write_input("rows.jsonl", bytes);
  bool accepted = true;
  try {
    spec.schema = detect_schema(spec.path);
  } catch (const DataError&) {
    spec.schema = "sft";
    accepted = false;
  }
  for (bool skip : {false, true}) {
    spec.skip_errors = skip;
    int64_t skipped = 0;
    try {
      if (spec.schema == "text") (void)parse_text_file(spec, skipped);
      else (void)parse_dataset(spec, 0, skipped);
    } catch (const DataError&) {
      accepted = false;
    }
  }
  return accepted;
}

namespace detail {
inline void walk(const ConfigTable& table) {
  for (const auto& key : table.keys()) {
    (void)table.location(key);
    auto attempt = [](auto&& fn) {
      try {
        fn();
      } catch (const ConfigError&) {
      }
    };
    attempt([&] { walk(table.get_table(key)); });
    attempt([&] {
      for (const auto& t : table.get_table_list(key)) walk(t);
    });
    attempt([&] { (void)table.get_string(key); });
    attempt([&] { (void)table.get_int(key); });
    attempt([&] { (void)table.get_float(key); });
    attempt([&] { (void)table.get_bool(key); });
    attempt([&] { (void)table.get_string_list(key); });
    attempt([&] { (void)table.get_int_list(key); });
    attempt([&] { (void)table.get_float_list(key); });
  }
}
}  // namespace detail

// The pipeline loader: ConfigDocument::parse_string (the nesting pre-scan, then toml++), then what the host does
// with a parsed file: every getter on every key, tables and arrays of tables recursively, the unknown-key check,
// and to_toml (the resolved copy written to the run folder).
inline bool exercise_toml(std::string_view text) {
  try {
    auto doc = ConfigDocument::parse_string(text, "fuzz.toml", "/nonexistent");
    auto root = doc->root();
    detail::walk(root);
    (void)doc->to_toml();
    root.check_no_unknown_keys();
    return true;
  } catch (const ConfigError&) {
    return false;
  }
}

// config.json: read_hf_config (a JSON object), then a copy and dump, as CausalLM and save_pretrained do.
inline bool exercise_hf_config(std::string_view bytes) {
  try {
    nlohmann::json config = read_hf_config(write_input("config.json", bytes));
    nlohmann::json copy = config;
    (void)copy.dump(2);
    return true;
  } catch (const std::runtime_error&) {  // read_json_object's error type
    return false;
  }
}

}  // namespace dschat::fuzz
