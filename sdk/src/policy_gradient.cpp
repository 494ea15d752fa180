#include "dschat/sdk/policy_gradient.h"

#include <ATen/ops/clamp.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/minimum.h>
#include <c10/core/GradMode.h>

#include <stdexcept>

namespace dschat::pg {

namespace {

at::Tensor grouped(const at::Tensor& rewards, int64_t group_size) {
  TORCH_CHECK(rewards.dim() == 1, "rewards must be [B], got ", rewards.sizes());
  TORCH_CHECK(group_size >= 2, "a group needs at least 2 samples per prompt, got ", group_size);
  TORCH_CHECK(rewards.size(0) % group_size == 0, "rewards [", rewards.size(0), "] are not whole groups of ",
              group_size);
  return rewards.to(at::kFloat).view({-1, group_size});
}

}  // namespace

at::Tensor group_advantages(const at::Tensor& rewards, int64_t group_size, bool std_normalize, double eps) {
  auto r = grouped(rewards, group_size);
  auto centred = r - r.mean(1, /*keepdim=*/true);
  if (std_normalize) centred = centred / (r.std(1, /*unbiased=*/true, /*keepdim=*/true) + eps);
  return centred.reshape({-1});
}

at::Tensor leave_one_out_advantages(const at::Tensor& rewards, int64_t group_size) {
  auto r = grouped(rewards, group_size);
  auto others = (r.sum(1, /*keepdim=*/true) - r) / static_cast<double>(group_size - 1);
  return (r - others).reshape({-1});
}

LossAggregation loss_aggregation_from_string(const std::string& name) {
  if (name == "token-mean") return LossAggregation::token_mean;
  if (name == "seq-mean") return LossAggregation::seq_mean;
  if (name == "seq-mean-token-sum") return LossAggregation::seq_mean_token_sum;
  throw std::invalid_argument("loss_aggregation '" + name +
                              "' is not one of \"token-mean\", \"seq-mean\", \"seq-mean-token-sum\"");
}

at::Tensor aggregate_loss(const at::Tensor& per_token, const at::Tensor& mask, LossAggregation how,
                          int64_t token_budget) {
  TORCH_CHECK(per_token.sizes() == mask.sizes(), "per-token losses ", per_token.sizes(), " and mask ", mask.sizes(),
              " differ");
  auto m = mask.to(per_token.scalar_type());
  auto masked = per_token * m;
  switch (how) {
    case LossAggregation::token_mean: return masked.sum() / m.sum().clamp_min(1.0);
    case LossAggregation::seq_mean: return (masked.sum(1) / m.sum(1).clamp_min(1.0)).mean();
    case LossAggregation::seq_mean_token_sum:
      TORCH_CHECK(token_budget >= 1, "token_budget must be >= 1, got ", token_budget);
      return masked.sum(1).mean() / static_cast<double>(token_budget);
  }
  TORCH_CHECK(false, "unknown loss aggregation");
}

PolicyLoss policy_loss(const at::Tensor& logprobs, const at::Tensor& old_logprobs, const at::Tensor& ref_logprobs,
                       const at::Tensor& advantages, const at::Tensor& mask, const PolicyLossOptions& options) {
  TORCH_CHECK(logprobs.sizes() == old_logprobs.sizes() && logprobs.sizes() == mask.sizes(), "log-probs ",
              logprobs.sizes(), ", old log-probs ", old_logprobs.sizes(), " and mask ", mask.sizes(), " differ");
  TORCH_CHECK(advantages.dim() == 1 && advantages.size(0) == logprobs.size(0), "advantages ", advantages.sizes(),
              " must be one per row of ", logprobs.sizes());
  auto a = advantages.to(logprobs.scalar_type()).unsqueeze(1);
  auto ratio = at::exp(logprobs - old_logprobs);
  auto unclipped = ratio * a;
  auto clipped = at::clamp(ratio, 1.0 - options.clip_low, 1.0 + options.clip_high) * a;
  auto per_token = -at::minimum(unclipped, clipped);
  PolicyLoss out;
  at::Tensor k3;
  if (ref_logprobs.defined()) {
    TORCH_CHECK(ref_logprobs.sizes() == logprobs.sizes(), "reference log-probs ", ref_logprobs.sizes(), " differ from ",
                logprobs.sizes());
    auto d = ref_logprobs - logprobs;
    k3 = at::exp(d) - d - 1.0;
    if (options.kl_coef != 0.0) per_token = per_token + options.kl_coef * k3;
  }
  out.loss = aggregate_loss(per_token, mask, options.aggregation, options.token_budget);
  at::NoGradGuard no_grad;
  auto m = mask.to(at::kFloat);
  const double tokens = std::max(1.0, m.sum().item<double>());
  out.clip_fraction = ((clipped < unclipped).to(at::kFloat) * m).sum().item<double>() / tokens;
  if (k3.defined()) out.kl = (k3.to(at::kFloat) * m).sum().item<double>() / tokens;
  return out;
}

}  // namespace dschat::pg
