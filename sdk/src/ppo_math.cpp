#include "dschat/sdk/ppo_math.h"

#include <vector>

#include <ATen/ops/arange.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>

namespace dschat::ppo {

namespace {
void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.defined() && b.defined() && a.sizes() == b.sizes(), "ppo: ", an, " ", a.sizes(), " and ", bn, " ",
              b.sizes(), " must have the same shape");
}
void check_start(const at::Tensor& t, int64_t start) {
  TORCH_CHECK(t.dim() == 2, "ppo: expected [batch, actions], got ", t.sizes());
  TORCH_CHECK(start >= 0 && start < t.size(1), "ppo: start ", start, " must lie in [0, ", t.size(1), ")");
}
}  // namespace

at::Tensor logprobs_from_logits(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                  logits.size(1) == labels.size(1),
              "ppo: logits [B, T, V] and labels [B, T] expected, got ", logits.sizes(), " and ", labels.sizes());
  auto x = at::isReducedFloatingType(logits.scalar_type()) ? logits.to(at::kFloat) : logits;
  return at::log_softmax(x, -1).gather(2, labels.to(at::kLong).unsqueeze(2)).squeeze(2);
}

at::Tensor answer_ends(const at::Tensor& action_mask, int64_t start) {
  check_start(action_mask, start);
  return action_mask.narrow(1, start, action_mask.size(1) - start).to(at::kLong).sum(1) + (start + 1);
}

at::Tensor compute_rewards(const at::Tensor& logprobs, const at::Tensor& ref_logprobs, const at::Tensor& reward_score,
                           const at::Tensor& action_mask, int64_t start, const PpoConfig& config) {
  check_same(logprobs, "logprobs", ref_logprobs, "ref_logprobs");
  check_same(logprobs, "logprobs", action_mask, "action_mask");
  check_start(logprobs, start);
  TORCH_CHECK(reward_score.dim() == 1 && reward_score.size(0) == logprobs.size(0), "ppo: reward_score must be [",
              logprobs.size(0), "], got ", reward_score.sizes());
  auto rewards = (logprobs - ref_logprobs).mul(-config.kl_coef).to(at::kFloat);
  const int64_t last = logprobs.size(1) - 1;
  // rewards[j, start:ends[j]][-1]: a Python slice clipped at the end of the row.
  auto index = (answer_ends(action_mask, start) - 1).clamp_max(last).to(rewards.device());
  auto clipped = reward_score.to(rewards.device(), at::kFloat).clamp(-config.clip_reward_value,
                                                                    config.clip_reward_value);
  rewards.scatter_add_(1, index.unsqueeze(1), clipped.unsqueeze(1));
  return rewards;
}

void mask_after_end(at::Tensor& rewards, at::Tensor& values, const at::Tensor& action_mask, int64_t start) {
  check_same(rewards, "rewards", values, "values");
  check_same(rewards, "rewards", action_mask, "action_mask");
  auto ends = answer_ends(action_mask, start).to(rewards.device());
  auto columns = at::arange(rewards.size(1), ends.options()).unsqueeze(0);
  auto after = columns >= ends.unsqueeze(1);
  rewards.masked_fill_(after, 0);
  values.masked_fill_(after.to(values.device()), 0);
}

AdvantagesAndReturns get_advantages_and_returns(const at::Tensor& values, const at::Tensor& rewards, int64_t start,
                                                const PpoConfig& config) {
  check_same(values, "values", rewards, "rewards");
  check_start(values, start);
  const int64_t length = rewards.size(1);
  std::vector<at::Tensor> reversed;
  reversed.reserve(length - start);
  at::Tensor last_gae = at::zeros_like(values.select(1, 0));
  for (int64_t t = length - 1; t >= start; --t) {
    auto next_values = t < length - 1 ? values.select(1, t + 1) : at::zeros_like(last_gae);
    auto delta = rewards.select(1, t) + config.gamma * next_values - values.select(1, t);
    last_gae = delta + config.gamma * config.lam * last_gae;
    reversed.push_back(last_gae);
  }
  std::vector<at::Tensor> forward(reversed.rbegin(), reversed.rend());
  AdvantagesAndReturns out;
  out.advantages = at::stack(forward, 1).detach();
  out.returns = out.advantages + values.narrow(1, start, length - start);
  return out;
}

at::Tensor actor_loss(const at::Tensor& logprobs, const at::Tensor& old_logprobs, const at::Tensor& advantages,
                      const at::Tensor& mask, const PpoConfig& config) {
  check_same(logprobs, "logprobs", old_logprobs, "old_logprobs");
  check_same(logprobs, "logprobs", advantages, "advantages");
  check_same(logprobs, "logprobs", mask, "mask");
  auto m = mask.to(logprobs.scalar_type());
  auto ratio = at::exp((logprobs - old_logprobs) * m);
  auto loss1 = -advantages * ratio;
  auto loss2 = -advantages * at::clamp(ratio, 1.0 - config.cliprange, 1.0 + config.cliprange);
  return (at::maximum(loss1, loss2) * m).sum() / m.sum();
}

at::Tensor critic_loss(const at::Tensor& values, const at::Tensor& old_values, const at::Tensor& returns,
                       const at::Tensor& mask, const PpoConfig& config) {
  check_same(values, "values", old_values, "old_values");
  check_same(values, "values", returns, "returns");
  check_same(values, "values", mask, "mask");
  auto m = mask.to(values.scalar_type());
  auto clipped = at::clamp(values, old_values - config.cliprange_value, old_values + config.cliprange_value);
  auto loss1 = (values - returns).square();
  auto loss2 = (clipped - returns).square();
  return 0.5 * (at::maximum(loss1, loss2) * m).sum() / m.sum();
}

}  // namespace dschat::ppo
