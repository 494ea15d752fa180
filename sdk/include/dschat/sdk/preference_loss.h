#pragma once
// Direct preference optimisation's arithmetic, as DeepSpeed-Chat's step2_dpo_finetuning/main.py computes it,
// shared by the dpo stage and its tests.
//
// Pairs come as reward pairs do ([2B, T], rows [0, B) chosen and [B, 2B) rejected, right-padded). Each pair is
// scored only from the first token where its two rows differ: the prompt and any shared start of the answers
// cancel in the DPO margin anyway, and leaving them out keeps the sums to what the preference is about.
#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// The tokens each row is scored on, int64 [2B, T]: attention_mask (1 on real tokens) with every position before
// the pair's first differing token set to 0 (both rows of an identical pair: nothing before 0, so every token).
DSCHAT_SDK_API at::Tensor pair_label_mask(const at::Tensor& input_ids, const at::Tensor& attention_mask);

// Per row, the sum over t >= 1 with label_mask[t] = 1 of log p(ids[t] | ids[< t]) under `logits` [N, T, V]
// (DeepSpeed-Chat's get_batch_logps), in fp32: [N].
DSCHAT_SDK_API at::Tensor sequence_logprobs(const at::Tensor& logits, const at::Tensor& input_ids,
                                            const at::Tensor& label_mask);

struct DpoOutput {
  at::Tensor loss;              // scalar: mean over pairs
  at::Tensor chosen_rewards;    // [B]: beta * (log pi(chosen) - log ref(chosen)), detached
  at::Tensor rejected_rewards;  // [B]: the same for the rejected answer
};

// logits = beta * ((pi_c - ref_c) - (pi_r - ref_r)); loss = mean(-logsigmoid(logits) * (1 - label_smoothing)
// - logsigmoid(-logits) * label_smoothing) (the conservative DPO of label_smoothing > 0). Inputs [B], summed
// log-probs of the policy (with grad) and the frozen reference.
DSCHAT_SDK_API DpoOutput dpo_loss(const at::Tensor& policy_chosen, const at::Tensor& policy_rejected,
                                  const at::Tensor& reference_chosen, const at::Tensor& reference_rejected,
                                  double beta, double label_smoothing);

}  // namespace dschat
