// ORPO's arithmetic (orpo_loss.h) against numbers worked out independently: each expected value below was
// computed in double precision with Python's math module only (no torch), straight from the formulas:
//   mean = sum / tokens;  log_odds(m) = m - math.log1p(-math.exp(m));  logsigmoid(z) = -math.log1p(math.exp(-z))
//   nll = -(sum of chosen sums) / (sum of chosen tokens);  or_loss = -beta * mean(logsigmoid(lo_c - lo_r))
#include <gtest/gtest.h>

#include <ATen/ops/tensor.h>

#include <cmath>

#include "orpo_loss.h"

namespace {

// Two pairs, beta 0.1, as [B] tensors of summed answer log-probs and answer token counts:
//   pair 0: chosen -2 over 4 tokens (mean -0.5), rejected -6 over 3 (mean -2)
//   pair 1: chosen -3 over 2 tokens (mean -1.5), rejected -4 over 4 (mean -1)
struct TwoPairs {
  at::Tensor chosen_sum = at::tensor({-2.0, -3.0}, at::kDouble).requires_grad_();
  at::Tensor chosen_tokens = at::tensor({4.0, 2.0}, at::kDouble);
  at::Tensor rejected_sum = at::tensor({-6.0, -4.0}, at::kDouble).requires_grad_();
  at::Tensor rejected_tokens = at::tensor({3.0, 4.0}, at::kDouble);
};

TEST(OrpoLoss, LogOdds) {
  // log_odds(-0.5) = -0.5 - log(1 - e^-0.5) = -0.5 + 0.932752 = 0.432752; log_odds(ln 0.5) = log(0.5 / 0.5) = 0.
  auto lo = orpo::log_odds(at::tensor({-0.5, -2.0, -1.5, -1.0, std::log(0.5)}, at::kDouble));
  EXPECT_NEAR(lo[0].item<double>(), 0.43275212956718856, 1e-12);
  EXPECT_NEAR(lo[1].item<double>(), -1.854586542131141, 1e-12);
  EXPECT_NEAR(lo[2].item<double>(), -1.247517541074546, 1e-12);
  EXPECT_NEAR(lo[3].item<double>(), -0.5413248546129181, 1e-12);
  EXPECT_NEAR(lo[4].item<double>(), 0.0, 1e-12);
}

TEST(OrpoLoss, TwoPairsByHand) {
  TwoPairs in;
  auto out = orpo::orpo_loss(in.chosen_sum, in.chosen_tokens, in.rejected_sum, in.rejected_tokens, 0.1);
  // log-odds ratios: pair 0 0.432752 - (-1.854587) = 2.287339, pair 1 -1.247518 - (-0.541325) = -0.706193;
  // logsigmoid of them -0.0967059 and -1.1073282, mean -0.6020170 (TRL's log_odds_ratio).
  EXPECT_NEAR(out.log_odds_chosen.item<double>(), 0.7905729926183508, 1e-12);  // (2.287339 - 0.706193) / 2
  EXPECT_NEAR(out.log_odds_ratio.item<double>(), -0.6020170191115162, 1e-12);
  EXPECT_NEAR(out.or_loss.item<double>(), 0.06020170191115162, 1e-12);  // 0.1 * 0.6020170
  EXPECT_NEAR(out.nll_loss.item<double>(), 0.8333333333333334, 1e-12);  // (2 + 3) / (4 + 2), not the mean of means
  EXPECT_NEAR(out.loss.item<double>(), 0.893535035244485, 1e-12);       // 0.833333 + 0.060202
  // Rewards are beta * mean log-prob: chosen -0.05, -0.15; rejected -0.2, -0.1 (accuracy 1/2, margin 0.1 / 2).
  EXPECT_NEAR(out.chosen_rewards[0].item<double>(), -0.05, 1e-12);
  EXPECT_NEAR(out.chosen_rewards[1].item<double>(), -0.15, 1e-12);
  EXPECT_NEAR(out.rejected_rewards[0].item<double>(), -0.2, 1e-12);
  EXPECT_NEAR(out.rejected_rewards[1].item<double>(), -0.1, 1e-12);
  EXPECT_FALSE(out.chosen_rewards.requires_grad());
}

TEST(OrpoLoss, GradientsByHand) {
  // d log_odds / d m = 1 / (1 - e^m), d logsigmoid(z) / dz = 1 - sigmoid(z), d mean / d sum = 1 / tokens:
  //   d loss / d chosen_sum[0]   = -1/6 - 0.1/2 * (1 - sigmoid(2.287339)) * 1/(1 - e^-0.5) * 1/4 = -0.169595
  //   d loss / d rejected_sum[1] = -0.1/2 * (1 - sigmoid(-0.706193)) * -1/(1 - e^-1) * 1/4       =  0.013240
  TwoPairs in;
  orpo::orpo_loss(in.chosen_sum, in.chosen_tokens, in.rejected_sum, in.rejected_tokens, 0.1).loss.backward();
  EXPECT_NEAR(in.chosen_sum.grad()[0].item<double>(), -0.1695950082156169, 1e-12);
  EXPECT_NEAR(in.rejected_sum.grad()[1].item<double>(), 0.01324034094861587, 1e-12);
}

TEST(OrpoLoss, LogOddsNearCertainty) {
  // In fp32, TRL's log1p(-exp(m)) rounds exp(-1e-5) and loses digits; log1mexp keeps them:
  // -1e-5 - math.log(-math.expm1(-1e-5)) = 11.512920. At m = 0 (every token certain) the odds are capped:
  // log_odds(-1e-6) = 13.815510, and the gradient through the discarded branch of at::where stays finite.
  auto m = at::tensor({-1e-5f, 0.0f}).requires_grad_();
  auto lo = orpo::log_odds(m);
  EXPECT_NEAR(lo[0].item<double>(), 11.512920464966061, 1e-4);
  EXPECT_NEAR(lo[1].item<double>(), 13.815510057964234, 1e-3);
  lo.sum().backward();
  EXPECT_TRUE(std::isfinite(m.grad()[0].item<double>()));
  EXPECT_EQ(m.grad()[1].item<double>(), 0.0);  // capped: no gradient pushes further towards certainty
}

TEST(OrpoLoss, RejectsEmptyAnswers) {
  auto x = at::tensor({-1.0}, at::kDouble);
  EXPECT_THROW(orpo::orpo_loss(x, at::tensor({0.0}, at::kDouble), x, at::tensor({1.0}, at::kDouble), 0.1),
               c10::Error);
}

}  // namespace
