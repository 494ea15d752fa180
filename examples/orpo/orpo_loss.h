#pragma once
// ORPO's arithmetic (Hong et al. 2024, arXiv:2403.07691), as TRL's ORPOTrainer computes it, over per-row sums of
// answer-token log-probs: small inline functions so that test_orpo_loss checks them without a model.
//
//   logp(y)     = mean over y's answer tokens of log p(token | before)        (TRL: average_log_prob=True)
//   log_odds(y) = logp - log(1 - exp(logp))                                   (log of p / (1 - p))
//   nll         = -sum(chosen answer log-probs) / chosen answer tokens        (token mean over the batch, as SFT)
//   or_loss     = beta * mean over pairs of -logsigmoid(log_odds(chosen) - log_odds(rejected))
//   loss        = nll + or_loss                                               (beta is the paper's lambda)
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/where.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace orpo {

// A mean log-prob of exactly 0 (every answer token certain) has infinite odds. Capping it at -1e-6 (a mean
// probability of 0.999999) keeps log_odds below 13.9 and changes nothing for a model that is not yet perfect.
inline constexpr double kMaxMeanLogp = -1e-6;

// log(1 - exp(x)) for x < 0. TRL writes log1p(-exp(x)), which loses all precision as x -> 0 (exp(x) rounds to 1);
// log(-expm1(x)) is exact there and log1p(-exp(x)) below -ln 2 (Maechler, "Accurately computing log(1 - exp(-|a|))").
// Each branch sees its input clamped to its own side, so the branch at::where discards cannot put inf * 0 = NaN
// into the gradient.
inline at::Tensor log1mexp(const at::Tensor& x) {
  const double split = -std::log(2.0);
  const at::Tensor near_zero = x.clamp_min(split).expm1().neg().log();
  const at::Tensor far = x.clamp_max(split).exp().neg().log1p();
  return at::where(x > split, near_zero, far);
}

// log(p / (1 - p)) for p = exp(mean_logp).
inline at::Tensor log_odds(const at::Tensor& mean_logp) {
  const at::Tensor x = mean_logp.clamp_max(kMaxMeanLogp);
  return x - log1mexp(x);
}

struct OrpoOutput {
  at::Tensor loss;      // scalar, with grad: nll + or_loss
  at::Tensor nll_loss;  // scalar, with grad
  at::Tensor or_loss;   // scalar, with grad: beta * mean(-logsigmoid(log_odds_chosen - log_odds_rejected))
  // Detached, named as TRL logs them:
  at::Tensor log_odds_ratio;    // scalar: mean(logsigmoid(log_odds_chosen - log_odds_rejected)) = -or_loss / beta
  at::Tensor log_odds_chosen;   // scalar: mean(log_odds_chosen - log_odds_rejected)
  at::Tensor chosen_rewards;    // [B]: beta * logp(chosen)
  at::Tensor rejected_rewards;  // [B]: beta * logp(rejected)
};

// Inputs [B], float: per pair the summed answer-token log-probs of the chosen and rejected rows (with grad) and
// how many answer tokens each has (> 0).
inline OrpoOutput orpo_loss(const at::Tensor& chosen_logp_sum, const at::Tensor& chosen_tokens,
                            const at::Tensor& rejected_logp_sum, const at::Tensor& rejected_tokens, double beta) {
  TORCH_CHECK(beta > 0.0, "orpo_loss: beta must be > 0, got ", beta);
  const auto B = chosen_logp_sum.sizes();
  TORCH_CHECK(B.size() == 1 && rejected_logp_sum.sizes() == B && chosen_tokens.sizes() == B &&
                  rejected_tokens.sizes() == B,
              "orpo_loss: expected four [B] tensors");
  TORCH_CHECK((chosen_tokens > 0).all().item<bool>() && (rejected_tokens > 0).all().item<bool>(),
              "orpo_loss: every answer needs at least one token");
  const at::Tensor chosen = chosen_logp_sum / chosen_tokens;  // mean log-prob per answer token
  const at::Tensor rejected = rejected_logp_sum / rejected_tokens;
  const at::Tensor ratio = log_odds(chosen) - log_odds(rejected);
  const at::Tensor log_sig = at::log_sigmoid(ratio);
  OrpoOutput out;
  out.nll_loss = -chosen_logp_sum.sum() / chosen_tokens.sum();
  out.or_loss = -beta * log_sig.mean();
  out.loss = out.nll_loss + out.or_loss;
  out.log_odds_ratio = log_sig.mean().detach();
  out.log_odds_chosen = ratio.mean().detach();
  out.chosen_rewards = (beta * chosen).detach();
  out.rejected_rewards = (beta * rejected).detach();
  return out;
}

}  // namespace orpo
