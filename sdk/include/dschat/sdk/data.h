#pragma once
// Datasets as the algorithms see them: text examples after the chat template, from the seeded per-step split.
// The host reads the files (JSONL in DeepSpeed-Chat's schemas) and implements DataSource; the SDK's collate
// helpers (data_collate.h) turn examples into padded token batches.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dschat {

class Tokenizer;

// One example. SFT uses prompt + chosen; the reward model uses prompt + chosen/rejected; PPO uses the prompt.
// Texts already carry DeepSpeed-Chat's template: prompt " Human: q Assistant:", answers " a".
struct TextExample {
  std::string prompt;
  std::string chosen;
  std::string rejected;  // empty when the dataset has no rejected answer
  // The row's other string and number fields as written (e.g. "answer" for a rule reward); numbers keep their
  // JSON text.
  std::map<std::string, std::string> fields;
};

// The three InstructGPT steps, which split each dataset by [data].split (default 2/4/4).
enum class Phase { sft = 0, reward = 1, ppo = 2 };

// An example as token ids, unpadded: what the collate helpers (data_collate.h) batch.
struct TokenizedExample {
  std::vector<int64_t> prompt;    // the prompt, with the tokenizer's own special tokens (e.g. OPT's BOS)
  std::vector<int64_t> chosen;    // prompt + chosen answer + eos, cut to max_seq_len as DeepSpeed-Chat truncates
  std::vector<int64_t> rejected;  // prompt + rejected answer + eos (cut likewise); empty when there is none
  int64_t example = -1;           // its index in examples(phase, eval), which tokenized() may thin out
};

struct DataLimits {
  int64_t max_seq_len = 512;         // SFT and RM sequences are right-padded to this
  int64_t max_prompt_seq_len = 256;  // PPO prompts longer than this are dropped, the rest left-padded to it
};

class DataSource {
 public:
  virtual ~DataSource() = default;
  // The phase's share of every dataset, blended; `eval` selects the held-out part.
  virtual const std::vector<TextExample>& examples(Phase phase, bool eval) const = 0;
  // Plain text for the PPO pretraining mix (PTX); empty when none is configured.
  virtual const std::vector<std::string>& pretraining_texts() const = 0;
  virtual const DataLimits& limits() const = 0;
  // The same examples tokenized with `tokenizer` (the host keeps a cache on disk, keyed by everything that
  // affects it). For Phase::ppo, prompts longer than max_prompt_seq_len are dropped, as DeepSpeed-Chat does.
  virtual const std::vector<TokenizedExample>& tokenized(Phase phase, bool eval, const Tokenizer& tokenizer) const = 0;
};

}  // namespace dschat
