// PPO arithmetic against numbers worked out by hand from DeepSpeed-Chat's ppo_trainer.py (the working is in
// the comments), not against the functions themselves.
#include <cmath>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dschat/sdk/ppo_math.h"

using namespace dschat;

namespace {

at::Tensor t(std::vector<std::vector<double>> rows) {
  std::vector<at::Tensor> out;
  for (auto& r : rows) out.push_back(at::tensor(r, at::kFloat));
  return at::stack(out);
}

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol = 1e-5) {
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(at::allclose(got.to(at::kFloat), want, 0, tol)) << "got\n" << got << "\nwant\n" << want;
}

// Sequences of 7 tokens, prompts padded to P = 3, so start = 2 and there are 6 action positions.
// Row 0: answer of 2 tokens then padding; attention [1 1 1 1 1 0 0] -> action mask [1 1 1 1 0 0].
// Row 1: left-padded prompt, answer to the end; attention [0 1 1 1 1 1 1] -> action mask [0 1 1 1 1 1].
const int64_t kStart = 2;
at::Tensor action_mask() { return t({{1, 1, 1, 1, 0, 0}, {0, 1, 1, 1, 1, 1}}); }
at::Tensor logp() { return t({{-1.0, -2.0, -0.5, -1.5, -3.0, -0.2}, {-0.3, -0.6, -0.9, -1.2, -0.4, -2.0}}); }
at::Tensor ref_logp() { return t({{-1.2, -1.0, -0.7, -1.0, -2.0, -0.1}, {-0.3, -0.5, -1.1, -1.2, -0.9, -1.0}}); }

TEST(PpoMath, RewardPlacementAndClipping) {
  // KL part: -0.1 * (logp - ref). Row 0: diff [0.2 -1 0.2 -0.5 -1 -0.1] -> [-0.02 0.1 -0.02 0.05 0.1 0.01].
  // ends = start + sum(mask[start:]) + 1 = 2 + 2 + 1 = 5 -> the score lands at index 4 (one past the last valid
  // answer action, DeepSpeed-Chat's off-by-one), clamped 7 -> 5: 0.1 + 5 = 5.1.
  // Row 1: diff [0 -0.1 0.2 0 0.5 -1] -> [0 0.01 -0.02 0 -0.05 0.1]; ends = 2 + 4 + 1 = 7, past the row: the
  // slice [2:7] ends at index 5, score -2.5 (inside the clip): 0.1 - 2.5 = -2.4.
  auto rewards = ppo::compute_rewards(logp(), ref_logp(), at::tensor({7.0f, -2.5f}), action_mask(), kStart);
  expect_close(rewards, t({{-0.02, 0.1, -0.02, 0.05, 5.1, 0.01}, {0.0, 0.01, -0.02, 0.0, -0.05, -2.4}}));
  expect_close(ppo::answer_ends(action_mask(), kStart).to(at::kFloat), at::tensor({5.0f, 7.0f}));

  // A large negative score clips at -5; kl_coef is a parameter.
  ppo::PpoConfig config;
  config.kl_coef = 0.0;
  config.clip_reward_value = 3.0;
  auto clipped = ppo::compute_rewards(logp(), ref_logp(), at::tensor({-9.0f, 1.0f}), action_mask(), kStart, config);
  expect_close(clipped, t({{0, 0, 0, 0, -3.0, 0}, {0, 0, 0, 0, 0, 1.0}}));
}

TEST(PpoMath, MaskAfterEndThenGae) {
  auto rewards = ppo::compute_rewards(logp(), ref_logp(), at::tensor({7.0f, -2.5f}), action_mask(), kStart);
  auto values = t({{0.5, 0.4, 0.3, 0.2, 0.1, 9.0}, {1, 1, 1, 1, 1, 1}});
  ppo::mask_after_end(rewards, values, action_mask(), kStart);
  // Row 0 ends at 5: index 5 of rewards (0.01) and values (9.0) become 0. Row 1 ends at 7: untouched.
  expect_close(rewards, t({{-0.02, 0.1, -0.02, 0.05, 5.1, 0.0}, {0.0, 0.01, -0.02, 0.0, -0.05, -2.4}}));
  expect_close(values, t({{0.5, 0.4, 0.3, 0.2, 0.1, 0.0}, {1, 1, 1, 1, 1, 1}}));

  // gamma 1, lambda 0.95, from t = 5 down to start = 2, V beyond the end = 0.
  // Row 0: d5 = 0 + 0 - 0 = 0 -> A5 = 0; d4 = 5.1 + 0 - 0.1 = 5 -> A4 = 5; d3 = 0.05 + 0.1 - 0.2 = -0.05 ->
  //        A3 = -0.05 + 0.95*5 = 4.7; d2 = -0.02 + 0.2 - 0.3 = -0.12 -> A2 = -0.12 + 0.95*4.7 = 4.345.
  // Row 1: d5 = -2.4 - 1 = -3.4 -> A5 = -3.4; d4 = -0.05 -> A4 = -0.05 - 3.23 = -3.28; d3 = 0 -> A3 = -3.116;
  //        d2 = -0.02 -> A2 = -0.02 - 2.9602 = -2.9802.
  auto gae = ppo::get_advantages_and_returns(values, rewards, kStart);
  expect_close(gae.advantages, t({{4.345, 4.7, 5.0, 0.0}, {-2.9802, -3.116, -3.28, -3.4}}));
  // returns = A + V[:, start:]
  expect_close(gae.returns, t({{4.645, 4.9, 5.1, 0.0}, {-1.9802, -2.116, -2.28, -2.4}}));
  EXPECT_FALSE(gae.advantages.requires_grad());

  ppo::PpoConfig config;  // lambda 0: one-step TD, A_t = r_t + V_{t+1} - V_t
  config.lam = 0.0;
  auto td = ppo::get_advantages_and_returns(values, rewards, kStart, config);
  expect_close(td.advantages, t({{-0.12, -0.05, 5.0, 0.0}, {-0.02, 0.0, -0.05, -3.4}}));
}

TEST(PpoMath, ClippedActorLoss) {
  // ratio = exp((new - old) * mask): [e^0.2, 1, e^-0.5, 1 (masked), e^0.5]
  // pos0 A=1:    max(-1.2214, -1.2 (clipped))            = -1.2
  // pos1 A=-2:   ratio 1                                  =  2
  // pos2 A=0.5:  max(-0.5 e^-0.5 = -0.30327, -0.5*0.8)    = -0.5 e^-0.5
  // pos3 masked
  // pos4 A=-1:   max(e^0.5 = 1.6487, 1.2)                 =  e^0.5 (the pessimistic, unclipped side)
  // loss = (-1.2 + 2 - 0.5 e^-0.5 + e^0.5) / 4
  auto logp_new = t({{-1.0, -0.5, -2.0, -1.0, -0.1}}).requires_grad_();
  auto old = t({{-1.2, -0.5, -1.5, -0.3, -0.6}});
  auto adv = t({{1.0, -2.0, 0.5, 3.0, -1.0}});
  auto mask = t({{1, 1, 1, 0, 1}});
  auto loss = ppo::actor_loss(logp_new, old, adv, mask);
  const double want = (0.8 - 0.5 * std::exp(-0.5) + std::exp(0.5)) / 4.0;
  EXPECT_NEAR(loss.item<double>(), want, 1e-6);
  // Gradient flows only where the unclipped term wins: d/dlogp of -A*ratio*mask/4 = -A*ratio/4 there, else 0.
  loss.backward();
  auto grad = logp_new.grad();
  expect_close(grad, t({{0.0, 2.0 / 4, -0.5 * std::exp(-0.5) / 4, 0.0, std::exp(0.5) / 4}}));
}

TEST(PpoMath, ClippedCriticLoss) {
  // pos0: v 1.0, clamp(1.0, 0.6, 1.0) = 1.0, (1-1.5)^2 = 0.25
  // pos1: v 0.5, clamp(0.5, 0.7, 1.1) = 0.7: max((0.5-0)^2, (0.7-0)^2) = 0.49
  // pos2: v -0.2 = old: 0.25
  // pos3: masked
  // loss = 0.5 * (0.25 + 0.49 + 0.25) / 3 = 0.165
  auto values = t({{1.0, 0.5, -0.2, 2.0}});
  auto old = t({{0.8, 0.9, -0.2, 0.0}});
  auto returns = t({{1.5, 0.0, 0.3, 1.0}});
  auto mask = t({{1, 1, 1, 0}});
  EXPECT_NEAR(ppo::critic_loss(values, old, returns, mask).item<double>(), 0.165, 1e-6);
  ppo::PpoConfig wide;
  wide.cliprange_value = 10.0;  // no clipping: 0.5 * (0.25 + 0.25 + 0.25) / 3
  EXPECT_NEAR(ppo::critic_loss(values, old, returns, mask, wide).item<double>(), 0.125, 1e-6);
}

TEST(PpoMath, LogprobsFromLogits) {
  // log_softmax([1, 2, 3])[0] = 1 - (3 + log(1 + e^-1 + e^-2)) = -2.4076059; log_softmax([0, 0, 0])[2] = -log 3.
  auto logits = at::tensor({1.0f, 2.0f, 3.0f, 0.0f, 0.0f, 0.0f}).reshape({1, 2, 3});
  auto labels = at::tensor({int64_t{0}, int64_t{2}}).reshape({1, 2});
  expect_close(ppo::logprobs_from_logits(logits, labels), t({{-2.4076059, -std::log(3.0)}}));
  // bf16 logits are computed in fp32
  EXPECT_EQ(ppo::logprobs_from_logits(logits.to(at::kBFloat16), labels).scalar_type(), at::kFloat);
}

TEST(PpoMath, BadShapesAreErrors) {
  EXPECT_THROW(ppo::compute_rewards(logp(), ref_logp().narrow(1, 0, 5), at::tensor({1.0f, 1.0f}), action_mask(), 2),
               std::exception);
  EXPECT_THROW(ppo::compute_rewards(logp(), ref_logp(), at::tensor({1.0f}), action_mask(), 2), std::exception);
  EXPECT_THROW(ppo::get_advantages_and_returns(logp(), logp(), 6), std::exception);
  EXPECT_THROW(ppo::actor_loss(logp(), logp(), logp(), action_mask().narrow(0, 0, 1)), std::exception);
}

}  // namespace
