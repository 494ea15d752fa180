#pragma once
// Critic-free RL over groups of samples (GRPO, RLOO): the trainer an algorithm plugin configures with its
// advantage estimator. Per rollout: each prompt answered num_samples times (rollout.h), every answer scored by
// the stage's rewards (rewards.h), advantages from the group's rewards, then ppo_epochs passes of the clipped
// surrogate with the k3 KL to the reference in the loss (policy_gradient.h) over micro-batches of the answers.
// The evaluation (evaluator.h), PTX-free; checkpoints (stage_checkpoint.h) and hooks (the EMA) as PPO's.
//
//   GroupTrainerOptions o = read_group_trainer_options(table, {.loss_aggregation = "seq-mean"});
//   GroupTrainer(o, context, [](const at::Tensor& r, int64_t g) { return pg::group_advantages(r, g, true); }).run();
//
// Roles: actor (trained), reference (frozen, default the actor's model), and optionally reward (a reward model
// scored as the `reward-model` reward, when the stage lists no `rewards`).
// Outputs: stage_dir/final (the actor as an HF folder + tokenizer), and whatever the hooks write (ema/).
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"
#include "dschat/sdk/policy_gradient.h"
#include "dschat/sdk/rlhf/consistency.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

class ConfigTable;
class StageContext;

namespace rlhf {

struct GroupTrainerOptions {
  std::string algorithm;  // the plugin's name: messages and the checkpoint marker (<algorithm>.json)
  std::string actor, reference, reward;  // reward: "" unless set (then scored when the stage lists no rewards)
  int64_t num_samples = 4;                // G: answers per prompt (>= 2)
  int64_t prompts_per_rollout = 8;        // per_device_generation_batch_size (prompts; rows = prompts * G)
  int64_t training_batch_size = 16;       // per_device_training_batch_size (answers per micro-batch)
  int64_t ppo_epochs = 1, epochs = 1, max_steps = 0;
  OptimizerOptions optimizer;
  pg::PolicyLossOptions loss;             // clip_low/high, kl_coef (beta), aggregation
  bool std_normalize = true;              // GRPO's std division (Dr. GRPO: false); estimator-specific
  int64_t eval_interval = 0, eval_prompts = 0, eval_batch_size = 16;
  bool trim_prompt_padding = true;
  int64_t checkpoint_interval = 0;        // rollouts between checkpoints; 0: none
  int64_t max_nonfinite_steps = 3;
  ConsistencyCheckConfig consistency;
};

// What a plugin may set before the shared options are read: its defaults where the algorithms differ.
struct GroupTrainerDefaults {
  std::string loss_aggregation = "token-mean";
  bool reads_std_normalize = true;  // RLOO has no std division: the key is then unknown
};

// Reads the options every group algorithm shares (documented in docs/algorithms.md), refusing bad values at
// their file:line: num_samples < 2, a stage with neither `rewards` nor `reward`, unknown loss_aggregation.
DSCHAT_SDK_API GroupTrainerOptions read_group_trainer_options(const ConfigTable& table, const std::string& algorithm,
                                                              const GroupTrainerDefaults& defaults);
DSCHAT_SDK_API std::map<std::string, std::string> group_trainer_roles(const GroupTrainerOptions& options);

// Advantages [B] from rewards [B] in groups of G consecutive rows.
using AdvantageEstimator = std::function<at::Tensor(const at::Tensor& rewards, int64_t group_size)>;

// Runs the stage. Defined in the SDK so that every group algorithm shares one loop.
DSCHAT_SDK_API void run_group_trainer(const GroupTrainerOptions& options, StageContext& context,
                                      const AdvantageEstimator& advantages);

}  // namespace rlhf
}  // namespace dschat
