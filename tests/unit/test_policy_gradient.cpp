// Critic-free policy-gradient math (dschat/sdk/policy_gradient.h) against hand-worked numbers: GRPO's and RLOO's
// advantages, the clipped surrogate with the k3 KL, the three loss aggregations, and their gradients.
#include <gtest/gtest.h>

#include <ATen/ops/tensor.h>

#include <cmath>
#include <vector>

#include "dschat/sdk/policy_gradient.h"

using namespace dschat;

namespace {

at::Tensor floats(std::vector<std::vector<double>> rows) {
  std::vector<float> flat;
  for (auto& r : rows)
    for (double v : r) flat.push_back(static_cast<float>(v));
  return at::tensor(flat).reshape({static_cast<int64_t>(rows.size()), -1});
}

void expect_values(const at::Tensor& t, const std::vector<double>& expected, double tol = 1e-6) {
  ASSERT_EQ(t.numel(), static_cast<int64_t>(expected.size()));
  auto flat = t.reshape({-1});
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(flat[i].item<double>(), expected[i], tol) << "at " << i;
}

// Two prompts, four samples each.
const std::vector<double> kRewards = {1, 0, 0, 1, 2, 2, 2, 5};

}  // namespace

TEST(PolicyGradient, GroupAdvantagesCentreAndScaleEachGroup) {
  auto r = at::tensor(std::vector<float>(kRewards.begin(), kRewards.end()));
  // Group 1: mean 0.5, sample std sqrt(1/3) -> +-0.5 * sqrt(3). Group 2: mean 2.75, std 1.5.
  const double a = 0.5 * std::sqrt(3.0);
  expect_values(pg::group_advantages(r, 4, /*std_normalize=*/true, /*eps=*/0.0), {a, -a, -a, a, -0.5, -0.5, -0.5, 1.5},
                1e-5);
  // Dr. GRPO: centred only.
  expect_values(pg::group_advantages(r, 4, false), {0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25});
  // A group whose rewards are all equal has no signal: zero advantages, not 0/0.
  expect_values(pg::group_advantages(at::tensor(std::vector<float>{3, 3}), 2, true), {0, 0});
}

TEST(PolicyGradient, LeaveOneOutBaselineIsTheMeanOfTheOthers) {
  auto r = at::tensor(std::vector<float>(kRewards.begin(), kRewards.end()));
  // 1 - (0 + 0 + 1) / 3 = 2/3; 0 - 2/3; group 2: 2 - (2 + 2 + 5) / 3 = -1, 5 - 2 = 3.
  expect_values(pg::leave_one_out_advantages(r, 4), {2.0 / 3, -2.0 / 3, -2.0 / 3, 2.0 / 3, -1, -1, -1, 3});
}

TEST(PolicyGradient, GroupsMustBeWholeAndHoldTwoSamples) {
  auto r = at::tensor(std::vector<float>{1, 2, 3});
  EXPECT_THROW(pg::group_advantages(r, 2, true), c10::Error);
  EXPECT_THROW(pg::leave_one_out_advantages(r, 1), c10::Error);
  EXPECT_THROW(pg::loss_aggregation_from_string("sum"), std::invalid_argument);
}

// Row 0 (A = +1): ratios 1 and 1.5 (clipped to 1.2); row 1 (A = -1): ratios 0.5 (clipped to 0.8), 1, 1.1.
// Per-token losses: row 0 [-1, -1.2, (masked)], row 1 [0.8, 1, 1.1].
struct Case {
  at::Tensor logp, old_logp, ref_logp, advantages, mask;
};
Case make_case() {
  Case c;
  c.old_logp = floats({{-1.0, -2.0, -1.5}, {-0.5, -1.0, -2.0}});
  c.logp = (c.old_logp + floats({{0.0, std::log(1.5), 0.3}, {std::log(0.5), 0.0, std::log(1.1)}})).detach();
  c.logp.set_requires_grad(true);
  // The reference equals the policy except on row 1's first token, where ref - logp = ln 2: k3 = 2 - ln 2 - 1.
  c.ref_logp = (c.logp + floats({{0.0, 0.0, 0.0}, {std::log(2.0), 0.0, 0.0}})).detach();
  c.advantages = at::tensor(std::vector<float>{1.0f, -1.0f});
  c.mask = floats({{1, 1, 0}, {1, 1, 1}});
  return c;
}

TEST(PolicyGradient, ClippedSurrogateUnderEachAggregation) {
  auto c = make_case();
  pg::PolicyLossOptions o;
  o.aggregation = pg::LossAggregation::token_mean;
  auto out = pg::policy_loss(c.logp, c.old_logp, at::Tensor(), c.advantages, c.mask, o);
  EXPECT_NEAR(out.loss.item<double>(), (-1 - 1.2 + 0.8 + 1 + 1.1) / 5, 1e-6);  // 0.14
  EXPECT_NEAR(out.clip_fraction, 2.0 / 5, 1e-9);
  EXPECT_EQ(out.kl, 0.0);
  o.aggregation = pg::LossAggregation::seq_mean;
  out = pg::policy_loss(c.logp, c.old_logp, at::Tensor(), c.advantages, c.mask, o);
  EXPECT_NEAR(out.loss.item<double>(), (-2.2 / 2 + 2.9 / 3) / 2, 1e-6);  // -0.0666667
  o.aggregation = pg::LossAggregation::seq_mean_token_sum;
  o.token_budget = 4;
  out = pg::policy_loss(c.logp, c.old_logp, at::Tensor(), c.advantages, c.mask, o);
  EXPECT_NEAR(out.loss.item<double>(), (-2.2 + 2.9) / 2 / 4, 1e-6);  // 0.0875
}

TEST(PolicyGradient, KlToTheReferenceAndTheGradient) {
  auto c = make_case();
  pg::PolicyLossOptions o;
  o.kl_coef = 0.5;
  auto out = pg::policy_loss(c.logp, c.old_logp, c.ref_logp, c.advantages, c.mask, o);
  const double k3 = 2.0 - std::log(2.0) - 1.0;  // 0.306853
  EXPECT_NEAR(out.kl, k3 / 5, 1e-6);
  EXPECT_NEAR(out.loss.item<double>(), 0.14 + 0.5 * k3 / 5, 1e-6);
  out.loss.backward();
  // Unclipped tokens: -ratio * A / 5; clipped ones: none from the surrogate; KL: beta * (1 - exp(ref - logp)) / 5.
  expect_values(c.logp.grad(), {-0.2, 0.0, 0.0, 0.5 * (1 - 2.0) / 5, 0.2, 1.1 / 5}, 1e-6);
}
