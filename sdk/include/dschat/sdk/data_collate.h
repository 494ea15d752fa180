#pragma once
// Turning examples into padded batches the way DeepSpeed-Chat's collators do. Used by the algorithm plugins.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "dschat/sdk/data.h"
#include "dschat/sdk/export.h"

namespace dschat {

class Tokenizer;

// Tokenizes one example: prompt alone, prompt+chosen+eos and prompt+rejected+eos (each the text encoded as one
// string, as DeepSpeed-Chat does, then the tokenizer's eos id appended as a real special token), each cut to
// max_seq_len. Throws std::invalid_argument when the tokenizer has no eos token.
DSCHAT_SDK_API TokenizedExample tokenize_example(const Tokenizer& tokenizer, const TextExample& example,
                                                 int64_t max_seq_len);

// Step 1: prompt+chosen+eos right-padded to max_seq_len. labels = input_ids with padding set to -100; the prompt
// is not masked (DeepSpeed-Chat trains on the whole sequence).
struct SftBatch {
  at::Tensor input_ids, attention_mask, labels;  // int64 [B, max_seq_len]
};
DSCHAT_SDK_API SftBatch collate_sft(const std::vector<const TokenizedExample*>& examples, int64_t max_seq_len,
                                    int64_t pad_id);

// Step 2: rows [0, B) are the chosen sequences, rows [B, 2B) the rejected ones (DataCollatorReward), each
// right-padded to max_seq_len. Every example must have a rejected answer.
struct PairBatch {
  at::Tensor input_ids, attention_mask;  // int64 [2B, max_seq_len]
  int64_t pairs = 0;                     // B
};
DSCHAT_SDK_API PairBatch collate_pairs(const std::vector<const TokenizedExample*>& examples, int64_t max_seq_len,
                                       int64_t pad_id);

// Step 3: prompts longer than max_prompt_seq_len are dropped (and counted), the rest left-padded to exactly
// max_prompt_seq_len (DataCollatorRLHF).
struct PromptBatch {
  at::Tensor input_ids, attention_mask;  // int64 [kept, max_prompt_seq_len]
  std::vector<int64_t> kept;             // indices into the examples given
  int64_t dropped = 0;
};
DSCHAT_SDK_API PromptBatch collate_prompts(const std::vector<const TokenizedExample*>& examples,
                                           int64_t max_prompt_seq_len, int64_t pad_id);

}  // namespace dschat
