#pragma once
// Critic-free policy-gradient math (GRPO, RLOO, DAPO / Dr. GRPO loss aggregation), as pure functions over
// tensors so each is tested alone against hand-worked numbers (tests/unit/test_policy_gradient.cpp).
//
// Layout: a rollout holds G samples of each prompt in consecutive rows (rows g*G .. g*G + G - 1 answer prompt
// g), rewards [B] with B = groups * G; per-token tensors are the answer's tokens [B, T] with a 0/1 mask.
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat::pg {

// GRPO (Shao et al. 2024): A_i = r_i - mean(group), divided by (std(group) + eps) when std_normalize (std with
// Bessel's correction, as torch.std and TRL); Dr. GRPO turns std_normalize off. [B] -> [B] fp32.
DSCHAT_SDK_API at::Tensor group_advantages(const at::Tensor& rewards, int64_t group_size, bool std_normalize,
                                           double eps = 1e-4);
// RLOO (Ahmadian et al. 2024): A_i = r_i - mean of the other G - 1 rewards of its group. [B] -> [B] fp32.
DSCHAT_SDK_API at::Tensor leave_one_out_advantages(const at::Tensor& rewards, int64_t group_size);

enum class LossAggregation {
  token_mean,          // DAPO: sum of every token's loss / number of tokens in the batch
  seq_mean,            // GRPO: each answer's mean token loss, averaged over answers
  seq_mean_token_sum,  // Dr. GRPO: each answer's token sum / token_budget, averaged over answers
};
// "token-mean" | "seq-mean" | "seq-mean-token-sum"; throws std::invalid_argument naming the choices.
DSCHAT_SDK_API LossAggregation loss_aggregation_from_string(const std::string& name);
// Reduces per-token losses [B, T] under mask [B, T] to a scalar; token_budget is Dr. GRPO's constant divisor
// (the generation budget, max_new_tokens), used by seq_mean_token_sum only.
DSCHAT_SDK_API at::Tensor aggregate_loss(const at::Tensor& per_token, const at::Tensor& mask, LossAggregation how,
                                         int64_t token_budget = 1);

struct PolicyLossOptions {
  double clip_low = 0.2, clip_high = 0.2;  // ratio clipped to [1 - clip_low, 1 + clip_high] (DAPO: high > low)
  double kl_coef = 0.0;                    // beta: weight of the k3 KL estimate to the reference in the loss
  LossAggregation aggregation = LossAggregation::token_mean;
  int64_t token_budget = 1;
};

struct PolicyLoss {
  at::Tensor loss;          // scalar, differentiable in logprobs
  double clip_fraction = 0;  // share of masked tokens where the clipped term was taken
  double kl = 0;            // mean k3 KL per masked token (0 when there is no reference)
};

// The clipped surrogate with a per-sequence advantage broadcast over its tokens, plus kl_coef * k3 KL
// (exp(ref - logp) - (ref - logp) - 1, Schulman's unbiased, non-negative estimator) when ref_logprobs is defined:
// per token  -min(ratio * A, clip(ratio) * A) + beta * k3,  ratio = exp(logp - old_logp), then aggregated.
// logprobs, old_logprobs, ref_logprobs, mask: [B, T]; advantages: [B].
DSCHAT_SDK_API PolicyLoss policy_loss(const at::Tensor& logprobs, const at::Tensor& old_logprobs,
                                      const at::Tensor& ref_logprobs, const at::Tensor& advantages,
                                      const at::Tensor& mask, const PolicyLossOptions& options);

}  // namespace dschat::pg
