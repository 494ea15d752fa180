#pragma once
// Kind "reward": scores a batch of answers, one number per row. An RL stage (ppo, grpo, rloo) lists its rewards:
//
//   rewards = [{ plugin = "reward-model", model = "rm" },
//              { plugin = "exact-answer", weight = 2.0 },
//              { plugin = "length-penalty", max_tokens = 64, weight = 0.5 }]
//
// and trains on their weighted sum (`weight`, default 1, is read by the host, not the plugin). A reward that
// reads a data field (the row's "answer") says so in required_fields(), so that `dschat validate` refuses a
// stage whose data lacks it before any stage runs; one that reads a model says so in model_roles(), as an
// algorithm does, so the host resolves and orders it with the stage's own roles.
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dschat/sdk/data.h"

namespace dschat {

class StageContext;

// The rows to score: prompt + answer ids as generated, and the texts a rule reads.
struct RewardBatch {
  at::Tensor sequences;       // [B, L] int64: left-padded prompt (columns < prompt_length), then the answer
  at::Tensor answer_mask;     // [B, L - prompt_length]: 1 for generated tokens up to and including eos
  int64_t prompt_length = 0;  // P
  int64_t pad_id = 0;         // the pad (= eos for most families) the sequences use
  std::vector<std::string> answers;             // each row's answer decoded (special tokens skipped)
  std::vector<const TextExample*> examples;     // each row's data row (fields such as "answer"); may be null
};

class RewardFunction {
 public:
  static constexpr const char* kind = "reward";
  static constexpr int interface_version = 1;
  virtual ~RewardFunction() = default;

  // Fields every data row must carry (TextExample::fields), e.g. {"answer"}.
  virtual std::vector<std::string> required_fields() const { return {}; }
  // Model roles it reads and what each refers to ({"reward": "rm"}); merged into the stage's roles.
  virtual std::map<std::string, std::string> model_roles() const { return {}; }
  // Once, before the first score(), with the models placed on `device` (load them here).
  virtual void prepare(StageContext& /*context*/, at::Device /*device*/) {}
  // One fp32 score per row, [B], on the sequences' device.
  virtual at::Tensor score(const RewardBatch& batch) = 0;
};

// A reward as a stage lists it: the plugin's name, its weight in the sum, the plugin.
struct WeightedReward {
  std::string name;
  double weight = 1.0;
  std::shared_ptr<RewardFunction> function;
};

}  // namespace dschat
