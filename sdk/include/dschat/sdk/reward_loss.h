#pragma once
// DeepSpeed-Chat's reward model arithmetic (dschat/utils/model/reward_model.py), shared by the reward stage,
// its tests and PPO.
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

struct PairLossOutput {
  at::Tensor loss;             // scalar: mean over pairs of -mean(logsigmoid(v_c[t] - v_r[t])) over the span
  at::Tensor chosen_scores;    // [B]: value at the last token before c_ind (the end of the chosen sequence)
  at::Tensor rejected_scores;  // [B]
};

// values, input_ids: [2B, T], rows [0, B) chosen and [B, 2B) rejected, right-padded with pad_id.
// Per pair, exactly as RewardModel.forward:
//   c_ind = position of the num_padding_at_beginning-th pad_id in the chosen row (0-based count of pad_id
//           occurrences, so with OPT's BOS == pad and 1, the BOS at 0 is skipped), or T when there are not that
//           many; r_ind likewise on the rejected row;
//   rows identical: the span is the last token [T-1, T), r_ind = c_ind;
//   otherwise: the span is [first index where the rows differ, max(c_ind, r_ind)).
// The first differing index must be > 0 (DeepSpeed-Chat asserts it); std::invalid_argument otherwise.
// The loss is computed in fp32.
DSCHAT_SDK_API PairLossOutput reward_pair_loss(const at::Tensor& values, const at::Tensor& input_ids, int64_t pad_id,
                                               int64_t num_padding_at_beginning);

// PPO's reward (forward_value): for each row the value just before the first pad_id at or after prompt_length
// (the end of the answer), or at T-1 when the answer has no pad. values, input_ids [B, T] -> [B].
DSCHAT_SDK_API at::Tensor end_scores(const at::Tensor& values, const at::Tensor& input_ids, int64_t pad_id,
                                     int64_t prompt_length);

}  // namespace dschat
