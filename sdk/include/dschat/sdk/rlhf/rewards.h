#pragma once
// Scoring rollouts: the stage's rewards (reward plugins, reward.h) summed with their weights, and the reward
// model as a RewardFunction for stages that name a reward role instead (PPO's `reward`, DeepSpeed-Chat's).
//
//   RewardSum rewards(stage_rewards(context, reward_role), tokenizer);   // the stage's list, or its reward model
//   rewards.prepare(context, device);                                     // once the models' device is known
//   auto scores = rewards.score(seq, answer_mask, P, pad_id, rollout_examples(data_rows, set, indices, copies, kept));
//   scores.total;   // [B] fp32: sum of weight * score
//   scores.parts;   // each reward's own [B] scores, for metrics (reward/<name>)
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "dschat/sdk/data.h"
#include "dschat/sdk/export.h"
#include "dschat/sdk/frozen_model.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/reward.h"

namespace dschat {

class RewardModel;
class StageContext;
class Tokenizer;

namespace rlhf {

// The reward model's score of each row (DeepSpeed-Chat's forward_value chosen_end_scores): its value at the last
// token before the first pad at or after the prompt, under seq != pad.
DSCHAT_SDK_API at::Tensor reward_model_scores(RewardModel& reward, const at::Tensor& seq, int64_t pad_id,
                                              int64_t prompt_length);
// A loaded (frozen) reward model as a reward named "reward-model"; prepare() places it on the device as the
// stage's strategy places frozen models (Strategy::place_frozen_model: sharded under ZeRO-3, offloaded when asked).
DSCHAT_SDK_API WeightedReward reward_model_reward(std::shared_ptr<RewardModel> model, double weight = 1.0,
                                                  FrozenPlacement placement = {});
// The rewards a stage scores with: the ones it lists (StageContext::rewards()), else the model of role
// `reward_role` loaded as a frozen reward model (value head included; on the host until prepare()). Throws
// std::invalid_argument when the stage has neither.
DSCHAT_SDK_API std::vector<WeightedReward> stage_rewards(StageContext& context, const std::string& reward_role,
                                                        std::optional<at::ScalarType> reward_dtype = std::nullopt,
                                                        FrozenPlacement placement = {});

// The data rows behind rollout rows: `examples` are the phase's rows (DataSource::examples), `set` its tokenized
// rows, `indices` the prompts of the rollout, each `copies` times in a row (rollout_prompts), then `kept` (rows of
// that batch left after dropping; undefined: all).
DSCHAT_SDK_API std::vector<const TextExample*> rollout_examples(const std::vector<TextExample>& examples,
                                                                const std::vector<TokenizedExample>& set,
                                                                const std::vector<int64_t>& indices,
                                                                int64_t copies = 1, const at::Tensor& kept = {});

struct RewardScores {
  at::Tensor total;                                     // [B] fp32
  std::vector<std::pair<std::string, at::Tensor>> parts;  // name, [B] fp32 (unweighted), in the stage's order
};

class DSCHAT_SDK_API RewardSum {
 public:
  // `tokenizer` decodes the answers for rule rewards; it may be null when every reward is a reward model.
  RewardSum(std::vector<WeightedReward> rewards, std::shared_ptr<const Tokenizer> tokenizer);
  // Each reward's prepare(), once, before the first score().
  void prepare(StageContext& context, at::Device device);
  // Scores `sequences` [B, L] (columns < prompt_length the prompt, the rest the answers, pad after their end);
  // `examples` are the rows' data rows (rollout_examples), one per row or empty.
  // `answer_mask` [B, L - P] is GenerationResult's (generated tokens up to and including eos).
  RewardScores score(const at::Tensor& sequences, const at::Tensor& answer_mask, int64_t prompt_length,
                     int64_t pad_id, const std::vector<const TextExample*>& examples);
  const std::vector<WeightedReward>& rewards() const { return rewards_; }

 private:
  std::vector<WeightedReward> rewards_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  bool decode_ = false;  // some reward is not a reward model: decode the answers
};

}  // namespace rlhf
}  // namespace dschat
