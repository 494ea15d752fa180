// The host's DataSource: parse once, split per phase (train/eval held out first, as DeepSpeed-Chat's 9:1
// train_eval split), blend, and tokenize into a cache keyed by everything that affects the tokens.
#include <cstring>
#include <fstream>
#include <iostream>

#include <fmt/format.h>

#include "dschat/framework/data.h"
#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat {

namespace {

// v2: each row also records its source index (`example`); the magic is part of the key, so v1 files are never read.
constexpr const char* kCacheMagic = "dschat-tokenized-v2\n";
const char* phase_name(Phase p) { return p == Phase::sft ? "sft" : p == Phase::reward ? "reward" : "ppo"; }

void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
void put_ids(std::string& out, const std::vector<int64_t>& ids) {
  put_u64(out, ids.size());
  out.append(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int64_t));
}

// Reads back what put_* wrote; any inconsistency makes the cache file unusable (it is rebuilt).
struct Reader {
  std::string_view data;
  bool ok = true;
  uint64_t u64() {
    uint64_t v = 0;
    if (data.size() < sizeof v) return ok = false, 0;
    std::memcpy(&v, data.data(), sizeof v);
    data.remove_prefix(sizeof v);
    return v;
  }
  std::vector<int64_t> ids() {
    uint64_t n = u64();
    if (!ok || n > data.size() / sizeof(int64_t)) return ok = false, std::vector<int64_t>{};
    std::vector<int64_t> v(n);
    std::memcpy(v.data(), data.data(), n * sizeof(int64_t));
    data.remove_prefix(n * sizeof(int64_t));
    return v;
  }
};

}  // namespace

HostDataSource::HostDataSource(DataSpec spec, uint64_t seed, std::filesystem::path cache_dir)
    : spec_(std::move(spec)), seed_(seed), cache_dir_(std::move(cache_dir)) {
  limits_.max_seq_len = spec_.max_seq_len;
  limits_.max_prompt_seq_len = spec_.max_prompt_seq_len;
}

void HostDataSource::load() const {
  if (loaded_) return;
  if (spec_.datasets.empty() && spec_.pretraining.empty())
    throw DataError("this pipeline declares no datasets: add [data] datasets = [...]");
  std::vector<double> phase_shares(spec_.split.begin(), spec_.split.end());
  std::vector<SourcedExample> parts[3][2];
  for (size_t d = 0; d < spec_.datasets.size(); ++d) {
    const auto& ds = spec_.datasets[d];
    int64_t skipped = 0;
    auto rows = parse_dataset(ds, d, skipped);
    if (skipped > 0)
      std::cerr << fmt::format("data: {}: skipped {} malformed rows (on_error = \"skip\")\n", ds.path.string(), skipped);
    counts_.skipped_rows += skipped;
    auto n = static_cast<int64_t>(rows.size());
    // Held-out part first, then each part split per phase with its own permutation (DeepSpeed-Chat applies the
    // phase split separately to train and eval). Single-answer data goes to SFT only (its split is 10,0,0).
    std::vector<int64_t> subsets[2];
    if (spec_.eval_fraction > 0) {
      std::vector<double> train_eval{1.0 - spec_.eval_fraction, spec_.eval_fraction};
      subsets[0] = split_indices(seed_, train_eval, n, 0);
      subsets[1] = split_indices(seed_, train_eval, n, 1);
    } else {
      for (int64_t i = 0; i < n; ++i) subsets[0].push_back(i);
    }
    std::vector<double> shares = ds.schema == "sft" ? std::vector<double>{1, 0, 0} : phase_shares;
    for (int e = 0; e < 2; ++e) {
      auto m = static_cast<int64_t>(subsets[e].size());
      if (m == 0) continue;
      for (size_t p = 0; p < 3; ++p)
        for (int64_t i : split_indices(seed_, shares, m, p))
          parts[p][e].push_back(rows[static_cast<size_t>(subsets[e][static_cast<size_t>(i)])]);
    }
  }
  for (int p = 0; p < 3; ++p)
    for (int e = 0; e < 2; ++e) {
      auto& blended = parts_[p][e];
      const auto& src = parts[p][e];
      if (spec_.datasets.size() > 1) {  // several datasets: one shuffle of the union, as get_shuffle_idx
        for (int64_t i : numpy_permutation(seed_, static_cast<int64_t>(src.size())))
          blended.push_back(src[static_cast<size_t>(i)]);
      } else {
        blended = src;
      }
      for (const auto& ex : blended) {
        TextExample t = ex.text;
        if (p == static_cast<int>(Phase::sft)) t.chosen = ex.sft_answer;
        texts_[p][e].push_back(std::move(t));
      }
    }
  for (const auto& ds : spec_.pretraining) {
    int64_t skipped = 0;
    auto texts = parse_text_file(ds, skipped);
    counts_.skipped_rows += skipped;
    pretraining_.insert(pretraining_.end(), texts.begin(), texts.end());
  }
  loaded_ = true;
}

const std::vector<TextExample>& HostDataSource::examples(Phase phase, bool eval) const {
  std::lock_guard lock(mutex_);
  load();
  return texts_[static_cast<int>(phase)][eval ? 1 : 0];
}

const std::vector<std::string>& HostDataSource::pretraining_texts() const {
  std::lock_guard lock(mutex_);
  load();
  return pretraining_;
}

DataCounts HostDataSource::counts() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

std::string HostDataSource::cache_key(Phase phase, bool eval, const Tokenizer& tokenizer) const {
  std::string key = fmt::format("{}phase={} eval={} seed={} split={},{},{} eval_fraction={:.17g} max_seq_len={} "
                                "max_prompt_seq_len={}\n",
                                kCacheMagic, phase_name(phase), eval, seed_, spec_.split[0], spec_.split[1],
                                spec_.split[2], spec_.eval_fraction, spec_.max_seq_len, spec_.max_prompt_seq_len);
  for (const auto& d : spec_.datasets)
    key += fmt::format("dataset {} {:016x} schema={} fields={},{},{},{} skip={}\n", d.path.string(), hash_file(d.path),
                       d.schema, d.prompt_field, d.chosen_field, d.rejected_field, d.response_field, d.skip_errors);
  auto tok_config = tokenizer.source().parent_path() / "tokenizer_config.json";
  key += fmt::format("tokenizer {:016x} config {:016x} eos={}\n", hash_file(tokenizer.source()),
                     std::filesystem::exists(tok_config) ? hash_file(tok_config) : 0, tokenizer.eos_id().value_or(-1));
  return key;
}

const std::vector<TokenizedExample>& HostDataSource::tokenized(Phase phase, bool eval, const Tokenizer& tokenizer) const {
  std::lock_guard lock(mutex_);
  std::string key = cache_key(phase, eval, tokenizer);
  if (auto it = tokenized_.find(key); it != tokenized_.end()) return it->second;
  auto file = cache_dir_ / fmt::format("tokenized-{}-{}-{:016x}.bin", phase_name(phase), eval ? "eval" : "train",
                                       fnv1a(key));
  std::vector<TokenizedExample> out;
  if (std::filesystem::exists(file)) {
    std::ifstream in(file, std::ios::binary);
    std::string content{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    Reader r{content};
    bool ok = content.compare(0, key.size(), key) == 0;
    if (ok) {
      r.data.remove_prefix(key.size());
      uint64_t n = r.u64();
      int64_t too_long = static_cast<int64_t>(r.u64()), dropped = static_cast<int64_t>(r.u64()),
              skipped = static_cast<int64_t>(r.u64());
      for (uint64_t i = 0; r.ok && i < n; ++i) {
        TokenizedExample ex;
        ex.prompt = r.ids();
        ex.chosen = r.ids();
        ex.rejected = r.ids();
        ex.example = static_cast<int64_t>(r.u64());
        out.push_back(std::move(ex));
      }
      ok = r.ok && r.data.empty();
      if (ok) {
        counts_.too_long_skipped += too_long;
        counts_.ppo_prompts_dropped += dropped;
        counts_.skipped_rows = std::max(counts_.skipped_rows, skipped);
      }
    }
    if (ok) {
      ++counts_.cache_hits;
      return tokenized_[key] = std::move(out);
    }
    std::cerr << fmt::format("data: ignoring unreadable cache file {}; rebuilding it\n", file.string());
    out.clear();
  }
  ++counts_.cache_misses;
  load();
  const auto& rows = parts_[static_cast<int>(phase)][eval ? 1 : 0];
  int64_t too_long = 0, dropped = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& row = rows[i];
    TextExample text = row.text;
    if (phase == Phase::sft) text.chosen = row.sft_answer;
    TokenizedExample ex = tokenize_example(tokenizer, text, spec_.max_seq_len);
    const auto& ds = spec_.datasets[row.dataset];
    if (phase == Phase::ppo) {
      if (static_cast<int64_t>(ex.prompt.size()) > spec_.max_prompt_seq_len) {
        ++dropped;
        continue;
      }
    } else if (static_cast<int64_t>(ex.prompt.size()) >= spec_.max_seq_len) {
      // No room for a single answer token: the row cannot teach anything in this phase.
      if (!ds.skip_errors)
        throw DataError(fmt::format("{}:{}: field '{}': the prompt is {} tokens, which leaves no room for the answer "
                                    "within max_seq_len = {} (set on_error = \"skip\" to skip such rows)",
                                    ds.path.string(), row.line, ds.prompt_field, ex.prompt.size(), spec_.max_seq_len));
      ++too_long;
      continue;
    }
    ex.example = static_cast<int64_t>(i);  // rows and examples(phase, eval) share one order
    out.push_back(std::move(ex));
  }
  if (too_long > 0)
    std::cerr << fmt::format("data: {} {}: skipped {} rows whose prompt fills max_seq_len = {}\n", phase_name(phase),
                             eval ? "eval" : "train", too_long, spec_.max_seq_len);
  if (dropped > 0)
    std::cerr << fmt::format("data: ppo {}: dropped {} prompts longer than max_prompt_seq_len = {}\n",
                             eval ? "eval" : "train", dropped, spec_.max_prompt_seq_len);
  counts_.too_long_skipped += too_long;
  counts_.ppo_prompts_dropped += dropped;
  std::string blob = key;
  put_u64(blob, out.size());
  put_u64(blob, static_cast<uint64_t>(too_long));
  put_u64(blob, static_cast<uint64_t>(dropped));
  put_u64(blob, static_cast<uint64_t>(counts_.skipped_rows));
  for (const auto& ex : out) {
    put_ids(blob, ex.prompt);
    put_ids(blob, ex.chosen);
    put_ids(blob, ex.rejected);
    put_u64(blob, static_cast<uint64_t>(ex.example));
  }
  std::filesystem::create_directories(cache_dir_);
  write_file_atomic(file, blob);
  return tokenized_[key] = std::move(out);
}

}  // namespace dschat
