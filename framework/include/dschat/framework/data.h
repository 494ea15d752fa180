#pragma once
// The host's datasets: local JSONL files in DeepSpeed-Chat's schemas, split per step from one seeded permutation
// per dataset (get_raw_dataset_split_index), blended, and tokenized into a cache under <output_dir>/.cache.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "dschat/sdk/config.h"
#include "dschat/sdk/data.h"

namespace dschat {

// A problem in a data file. what() is "file:line: field 'x': message" (line and field when known).
class DataError : public std::runtime_error {
 public:
  // The message quotes the file's bytes; invalid UTF-8 in it is escaped (printable_text).
  explicit DataError(const std::string& what) : std::runtime_error(printable_text(what)) {}
};

struct DatasetSpec {
  std::filesystem::path path;
  // rm-static: prompt already templated (" Human: ... Assistant:"), chosen/rejected answers, response for SFT;
  // pairwise: raw prompt/chosen/rejected, the chat template is applied; sft: raw prompt/response, SFT only;
  // text: plain text for the pretraining mix ("text" field of a JSONL object, or each non-empty line).
  std::string schema;
  std::string prompt_field = "prompt", chosen_field = "chosen", rejected_field = "rejected",
              response_field = "response", text_field = "text";
  bool skip_errors = false;  // on_error = "skip": bad rows are skipped and counted instead of failing
};

struct DataSpec {
  std::vector<DatasetSpec> datasets;
  std::vector<DatasetSpec> pretraining;
  std::vector<int64_t> split{2, 4, 4};  // SFT / RM / PPO shares
  double eval_fraction = 0.1;           // held out of each dataset, then split per phase like the train part
  int64_t max_seq_len = 512;
  int64_t max_prompt_seq_len = 256;
};

// Reads the first line of `path` and names its schema from the fields present; throws DataError when the file is
// empty, the line is not a JSON object, or the fields fit no schema or more than one.
std::string detect_schema(const std::filesystem::path& path);

// numpy's legacy RandomState(seed).shuffle(arange(n)), bit for bit: DeepSpeed-Chat's permutation.
std::vector<int64_t> numpy_permutation(uint64_t seed, int64_t n);
// DeepSpeed-Chat's get_raw_dataset_split_index boundaries: shares normalised, round() cumulative, excess
// subtracted. Returns shares.size() + 1 boundaries from 0 to n.
std::vector<int64_t> split_boundaries(const std::vector<double>& shares, int64_t n);
// The indices of part `part` of [0, n) under `shares` and the seeded permutation.
std::vector<int64_t> split_indices(uint64_t seed, const std::vector<double>& shares, int64_t n, size_t part);

// 64-bit FNV-1a, for cache keys.
uint64_t fnv1a(std::string_view bytes, uint64_t hash = 0xcbf29ce484222325ULL);
uint64_t hash_file(const std::filesystem::path& path);

// One parsed row and where it came from (for messages about it later, e.g. a prompt too long).
struct SourcedExample {
  TextExample text;
  std::string sft_answer;  // what step 1 trains on: `response` for rm-static, else the chosen answer
  size_t dataset = 0;
  int64_t line = 0;
};

struct DataCounts {
  int64_t skipped_rows = 0;          // malformed rows skipped under on_error = "skip"
  int64_t too_long_skipped = 0;      // prompts that leave no room for an answer, skipped
  int64_t ppo_prompts_dropped = 0;   // PPO prompts longer than max_prompt_seq_len (DeepSpeed-Chat drops them)
  int64_t cache_hits = 0, cache_misses = 0;
};

// Parses one dataset (schema already resolved) into rows; malformed rows are errors, or skipped and counted.
std::vector<SourcedExample> parse_dataset(const DatasetSpec& spec, size_t index, int64_t& skipped);
// A pretraining file: the text field of each JSONL object (.jsonl/.json), otherwise each non-empty line.
std::vector<std::string> parse_text_file(const DatasetSpec& spec, int64_t& skipped);

class HostDataSource : public DataSource {
 public:
  HostDataSource(DataSpec spec, uint64_t seed, std::filesystem::path cache_dir);

  const std::vector<TextExample>& examples(Phase phase, bool eval) const override;
  const std::vector<std::string>& pretraining_texts() const override;
  const DataLimits& limits() const override { return limits_; }
  const std::vector<TokenizedExample>& tokenized(Phase phase, bool eval, const Tokenizer& tokenizer) const override;

  DataCounts counts() const;
  const DataSpec& spec() const { return spec_; }

 private:
  void load() const;  // parses every file once, under mutex_
  std::string cache_key(Phase phase, bool eval, const Tokenizer& tokenizer) const;

  DataSpec spec_;
  uint64_t seed_;
  std::filesystem::path cache_dir_;
  DataLimits limits_;
  mutable std::mutex mutex_;
  mutable bool loaded_ = false;
  mutable std::vector<SourcedExample> parts_[3][2];  // [phase][eval]
  mutable std::vector<TextExample> texts_[3][2];
  mutable std::vector<std::string> pretraining_;
  mutable std::map<std::string, std::vector<TokenizedExample>> tokenized_;  // by cache key
  mutable DataCounts counts_;
};

}  // namespace dschat
