#pragma once
// The pieces of a PPO rollout that DeepSpeed-Chat's generate_experience adds on top of ppo_math.h, kept apart so
// that tests/unit/test_ppo.cpp can check them directly.
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/reward_model.h"

namespace dschat::ppo_rollout {

// Indices of the rows whose answer (columns from prompt_length on) has more than one non-pad token; DeepSpeed-Chat
// drops the others before computing anything (`valid_ans_len > 1`).
inline at::Tensor rows_to_keep(const at::Tensor& seq, int64_t prompt_length, int64_t pad_id) {
  return (seq.slice(1, prompt_length).ne(pad_id).sum(1) > 1).nonzero().squeeze(1);
}

// DeepSpeed-Chat's training-side mask: seq != pad. It also hides OPT's BOS (== pad) and a generated eos (== pad).
inline at::Tensor experience_mask(const at::Tensor& seq, int64_t pad_id) { return seq.ne(pad_id).to(at::kLong); }

// The reward model's score of each rollout row (forward_value's chosen_end_scores): its value at the last token
// before the first pad at or after the prompt, under experience_mask.
inline at::Tensor rollout_scores(RewardModel& reward, const at::Tensor& seq, int64_t pad_id, int64_t prompt_length) {
  return end_scores(reward.values(seq, experience_mask(seq, pad_id)), seq, pad_id, prompt_length);
}

// Drops leading columns that are padding in every row of a left-padded prompt batch. Positions come from the
// mask, so the model's outputs do not change; DeepSpeed-Chat pads to max_prompt_seq_len and computes the pad
// columns anyway.
inline void trim_left_padding(at::Tensor& ids, at::Tensor& mask) {
  auto any = mask.sum(0).gt(0).nonzero();
  if (any.numel() == 0) return;
  const int64_t first = any[0][0].item<int64_t>();
  ids = ids.slice(1, first);
  mask = mask.slice(1, first);
}

}  // namespace dschat::ppo_rollout
