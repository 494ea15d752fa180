#pragma once
// PPO's arithmetic, exactly as DeepSpeed-Chat's ppo_trainer.py (DSC/dschat/rlhf/ppo_trainer.py) does it.
//
// Shapes, for a rollout of sequences [B, L] with prompts padded to P:
//   log-probs / ref log-probs / values are over the L - 1 action positions: logp[:, t] is the log-prob of
//   seq[:, t + 1]; values[:, t] is the critic's value at token t (values over seq[:, :-1]);
//   action_mask = attention_mask[:, 1:]  ([B, L - 1]);  start = P - 1, the first action that is an answer token.
// Everything from `start` on is what the losses see: advantages / returns are [B, L - 1 - start].
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat::ppo {

// DeepSpeed-Chat's constants, as defaults (the pipeline may change them).
struct PpoConfig {
  double kl_coef = 0.1;            // kl_ctl
  double clip_reward_value = 5.0;  // the sequence score is clamped to +-this
  double cliprange = 0.2;          // actor ratio clip
  double cliprange_value = 0.2;    // critic value clip
  double gamma = 1.0;
  double lam = 0.95;
};

// gather(log_softmax(logits), labels): logits [B, T, V], labels [B, T] -> [B, T] (float32 if logits are
// half precision, as --compute_fp32_loss would; else the logits' dtype).
DSCHAT_SDK_API at::Tensor logprobs_from_logits(const at::Tensor& logits, const at::Tensor& labels);

// One past the last valid answer action of each row: ends = start + action_mask[:, start:].sum(1) + 1 ([B],
// int64). Can equal L (= T + 1 columns) when the answer runs to the end.
DSCHAT_SDK_API at::Tensor answer_ends(const at::Tensor& action_mask, int64_t start);

// r_t = -kl_coef * (logp_t - ref_logp_t) at every action position, plus clamp(score, +-clip_reward_value)
// added at index min(ends - 1, T - 1) = start + n_valid (DeepSpeed-Chat's `rewards[j, start:ends[j]][-1]`:
// one past the last valid answer action unless the answer fills the sequence). logp, ref_logp, action_mask
// [B, T]; reward_score [B]. Returns a new [B, T] float tensor.
DSCHAT_SDK_API at::Tensor compute_rewards(const at::Tensor& logprobs, const at::Tensor& ref_logprobs,
                                          const at::Tensor& reward_score, const at::Tensor& action_mask,
                                          int64_t start, const PpoConfig& config = {});

// Zeroes rewards and values at every index >= ends (in place), as train_rlhf does before GAE, so the advantage
// of the last action is not contaminated by what lies after the end.
DSCHAT_SDK_API void mask_after_end(at::Tensor& rewards, at::Tensor& values, const at::Tensor& action_mask,
                                   int64_t start);

struct AdvantagesAndReturns {
  at::Tensor advantages;  // [B, T - start], detached
  at::Tensor returns;     // [B, T - start] = advantages + values[:, start:]
};

// GAE from `start` to the end: delta_t = r_t + gamma * V_{t+1} - V_t (V_T = 0), A_t = delta_t + gamma*lam*A_{t+1}.
// No whitening. values, rewards [B, T].
DSCHAT_SDK_API AdvantagesAndReturns get_advantages_and_returns(const at::Tensor& values, const at::Tensor& rewards,
                                                               int64_t start, const PpoConfig& config = {});

// sum(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)) * mask) / sum(mask), ratio = exp((logp - old) * mask).
// All [B, T - start]. A scalar.
DSCHAT_SDK_API at::Tensor actor_loss(const at::Tensor& logprobs, const at::Tensor& old_logprobs,
                                     const at::Tensor& advantages, const at::Tensor& mask,
                                     const PpoConfig& config = {});

// 0.5 * sum(max((v - R)^2, (clamp(v, old - c, old + c) - R)^2) * mask) / sum(mask). All [B, T - start].
DSCHAT_SDK_API at::Tensor critic_loss(const at::Tensor& values, const at::Tensor& old_values,
                                      const at::Tensor& returns, const at::Tensor& mask,
                                      const PpoConfig& config = {});

}  // namespace dschat::ppo
