#include "dschat/sdk/data_collate.h"

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "dschat/sdk/tokenizer.h"

namespace dschat {

namespace {

std::vector<int64_t> with_eos(const Tokenizer& tokenizer, const std::string& text, int64_t eos, int64_t max_seq_len) {
  std::vector<int64_t> ids = tokenizer.encode(text);
  ids.push_back(eos);
  if (static_cast<int64_t>(ids.size()) > max_seq_len) ids.resize(static_cast<size_t>(max_seq_len));
  return ids;
}

// Copies each row into a [rows, width] tensor filled with pad_id; right or left aligned.
void fill_rows(const std::vector<const std::vector<int64_t>*>& rows, int64_t width, int64_t pad_id, bool left,
               at::Tensor& ids, at::Tensor& mask) {
  auto n = static_cast<int64_t>(rows.size());
  ids = at::full({n, width}, pad_id, at::kLong);
  mask = at::zeros({n, width}, at::kLong);
  int64_t* ip = ids.data_ptr<int64_t>();
  int64_t* mp = mask.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    const auto& row = *rows[static_cast<size_t>(r)];
    auto len = std::min<int64_t>(static_cast<int64_t>(row.size()), width);
    int64_t offset = r * width + (left ? width - len : 0);
    std::memcpy(ip + offset, row.data(), static_cast<size_t>(len) * sizeof(int64_t));
    std::fill(mp + offset, mp + offset + len, 1);
  }
}

void check_width(int64_t width, const char* what) {
  if (width < 1) throw std::invalid_argument(std::string(what) + " must be >= 1");
}

}  // namespace

TokenizedExample tokenize_example(const Tokenizer& tokenizer, const TextExample& example, int64_t max_seq_len) {
  auto eos = tokenizer.eos_id();
  if (!eos)
    throw std::invalid_argument("tokenizer " + tokenizer.source().string() +
                                " has no eos token; the end of a sequence must be a real special token");
  TokenizedExample out;
  out.prompt = tokenizer.encode(example.prompt);
  out.chosen = with_eos(tokenizer, example.prompt + example.chosen, *eos, max_seq_len);
  if (!example.rejected.empty()) out.rejected = with_eos(tokenizer, example.prompt + example.rejected, *eos, max_seq_len);
  return out;
}

SftBatch collate_sft(const std::vector<const TokenizedExample*>& examples, int64_t max_seq_len, int64_t pad_id) {
  check_width(max_seq_len, "max_seq_len");
  std::vector<const std::vector<int64_t>*> rows;
  for (const auto* e : examples) rows.push_back(&e->chosen);
  SftBatch batch;
  fill_rows(rows, max_seq_len, pad_id, /*left=*/false, batch.input_ids, batch.attention_mask);
  batch.labels = batch.input_ids.masked_fill(batch.attention_mask.eq(0), -100);
  return batch;
}

PairBatch collate_pairs(const std::vector<const TokenizedExample*>& examples, int64_t max_seq_len, int64_t pad_id) {
  check_width(max_seq_len, "max_seq_len");
  std::vector<const std::vector<int64_t>*> rows;
  for (const auto* e : examples) rows.push_back(&e->chosen);
  for (size_t i = 0; i < examples.size(); ++i) {
    if (examples[i]->rejected.empty())
      throw std::invalid_argument("collate_pairs: example " + std::to_string(i) + " has no rejected answer");
    rows.push_back(&examples[i]->rejected);
  }
  PairBatch batch;
  fill_rows(rows, max_seq_len, pad_id, /*left=*/false, batch.input_ids, batch.attention_mask);
  batch.pairs = static_cast<int64_t>(examples.size());
  return batch;
}

PromptBatch collate_prompts(const std::vector<const TokenizedExample*>& examples, int64_t max_prompt_seq_len,
                            int64_t pad_id) {
  check_width(max_prompt_seq_len, "max_prompt_seq_len");
  PromptBatch batch;
  std::vector<const std::vector<int64_t>*> rows;
  for (size_t i = 0; i < examples.size(); ++i) {
    if (static_cast<int64_t>(examples[i]->prompt.size()) > max_prompt_seq_len) {
      ++batch.dropped;
      continue;
    }
    rows.push_back(&examples[i]->prompt);
    batch.kept.push_back(static_cast<int64_t>(i));
  }
  fill_rows(rows, max_prompt_seq_len, pad_id, /*left=*/true, batch.input_ids, batch.attention_mask);
  return batch;
}

}  // namespace dschat
