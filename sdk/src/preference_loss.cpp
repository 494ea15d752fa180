// DPO arithmetic (dschat/sdk/preference_loss.h).
#include "dschat/sdk/preference_loss.h"

#include <ATen/ops/gather.h>
#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/ne.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

namespace dschat {

at::Tensor pair_label_mask(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.size(0) % 2 == 0, "pair_label_mask: input_ids must be [2B, T], got ",
              input_ids.sizes());
  TORCH_CHECK(attention_mask.sizes() == input_ids.sizes(), "pair_label_mask: attention_mask ", attention_mask.sizes(),
              " differs from input_ids ", input_ids.sizes());
  const int64_t B = input_ids.size(0) / 2;
  at::Tensor mask = attention_mask.to(at::kLong).clone();
  at::Tensor differs = input_ids.narrow(0, 0, B).ne(input_ids.narrow(0, B, B));  // [B, T]
  for (int64_t i = 0; i < B; ++i) {
    at::Tensor where = differs[i].nonzero();
    const int64_t first = where.numel() > 0 ? where[0][0].item<int64_t>() : 0;
    mask[i].narrow(0, 0, first).zero_();
    mask[i + B].narrow(0, 0, first).zero_();
  }
  return mask;
}

at::Tensor sequence_logprobs(const at::Tensor& logits, const at::Tensor& input_ids, const at::Tensor& label_mask) {
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == input_ids.size(0) && logits.size(1) == input_ids.size(1),
              "sequence_logprobs: logits ", logits.sizes(), " do not match input_ids ", input_ids.sizes());
  const int64_t T = input_ids.size(1);
  at::Tensor mask = label_mask.narrow(1, 1, T - 1).to(at::kFloat);
  // Masked positions gather token 0 (DeepSpeed-Chat multiplies the labels by the mask) and weigh nothing.
  at::Tensor labels = (input_ids.narrow(1, 1, T - 1) * label_mask.narrow(1, 1, T - 1).to(at::kLong)).unsqueeze(2);
  at::Tensor logp = at::log_softmax(logits.narrow(1, 0, T - 1).to(at::kFloat), -1).gather(2, labels).squeeze(2);
  return (logp * mask).sum(-1);
}

DpoOutput dpo_loss(const at::Tensor& policy_chosen, const at::Tensor& policy_rejected,
                   const at::Tensor& reference_chosen, const at::Tensor& reference_rejected, double beta,
                   double label_smoothing) {
  TORCH_CHECK(beta > 0.0, "dpo_loss: beta must be > 0, got ", beta);
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing < 0.5, "dpo_loss: label_smoothing must be in [0, 0.5), got ",
              label_smoothing);
  at::Tensor chosen_margin = policy_chosen - reference_chosen;
  at::Tensor rejected_margin = policy_rejected - reference_rejected;
  at::Tensor logits = beta * (chosen_margin - rejected_margin);
  DpoOutput out;
  out.loss = (-at::log_sigmoid(logits) * (1.0 - label_smoothing) - at::log_sigmoid(-logits) * label_smoothing).mean();
  out.chosen_rewards = (beta * chosen_margin).detach();
  out.rejected_rewards = (beta * rejected_margin).detach();
  return out;
}

}  // namespace dschat
