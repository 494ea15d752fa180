// DeepSpeed-Chat's reward-model loss and scores (sdk reward_loss.h) against values worked out by hand from its
// RewardModel.forward / forward_value code.
#include <cmath>
#include <vector>

#include <gtest/gtest.h>
#include <ATen/ATen.h>

#include "dschat/sdk/reward_loss.h"

using namespace dschat;

namespace {

double logsigmoid(double x) { return -std::log1p(std::exp(-x)); }

at::Tensor ids(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<at::Tensor> out;
  for (const auto& r : rows) out.push_back(at::tensor(r, at::kLong));
  return at::stack(out);
}

at::Tensor vals(const std::vector<std::vector<double>>& rows) {
  std::vector<at::Tensor> out;
  for (const auto& r : rows) out.push_back(at::tensor(r, at::kDouble).to(at::kFloat));
  return at::stack(out);
}

}  // namespace

TEST(RewardLoss, IdenticalPairUsesTheLastTokenOnly) {
  // chosen == rejected: span [T-1, T), scores at c_ind - 1 for both (r_ind = c_ind).
  auto input = ids({{5, 6, 7, 1, 1}, {5, 6, 7, 1, 1}});
  auto v = vals({{0.1, 0.2, 0.3, 0.4, 2.0}, {9.0, 9.0, -1.0, 9.0, 0.5}});
  auto out = reward_pair_loss(v, input, /*pad_id=*/1, /*npb=*/0);
  EXPECT_NEAR(out.loss.item<double>(), -logsigmoid(2.0 - 0.5), 1e-6);
  EXPECT_NEAR(out.chosen_scores[0].item<double>(), 0.3, 1e-6);    // c_ind = 3
  EXPECT_NEAR(out.rejected_scores[0].item<double>(), -1.0, 1e-6);  // r_ind = c_ind
}

TEST(RewardLoss, DifferentLengthsSpanFromDivergenceToTheLaterEnd) {
  // chosen ends at 4 (first pad), rejected at 3; they differ first at 2: span [2, 4), which includes the rejected
  // row's first pad position.
  auto input = ids({{5, 6, 7, 8, 1, 1}, {5, 6, 9, 1, 1, 1}});
  auto v = vals({{0.0, 0.0, 1.0, 2.0, 7.0, 7.0}, {0.0, 0.0, 0.5, -1.0, 7.0, 7.0}});
  auto out = reward_pair_loss(v, input, 1, 0);
  const double expected = -(logsigmoid(1.0 - 0.5) + logsigmoid(2.0 - (-1.0))) / 2.0;
  EXPECT_NEAR(out.loss.item<double>(), expected, 1e-6);
  EXPECT_NEAR(out.chosen_scores[0].item<double>(), 2.0, 1e-6);    // value at 3
  EXPECT_NEAR(out.rejected_scores[0].item<double>(), 0.5, 1e-6);  // value at 2
}

TEST(RewardLoss, PadEqualsBosSkipsTheLeadingPad) {
  // OPT: </s> (id 2) starts every row and is also the pad. With num_padding_at_beginning = 1 the end is the
  // second pad occurrence; a row without padding ends at T.
  // Rows: chosen 0, chosen 1, rejected 0, rejected 1.
  auto input = ids({{2, 5, 6, 7, 2, 2}, {2, 5, 6, 7, 8, 9}, {2, 5, 8, 2, 2, 2}, {2, 5, 6, 3, 2, 2}});
  auto v = vals({{0.0, 0.0, 1.0, 3.0, 9.0, 9.0},
                 {0.0, 0.0, 0.0, 1.0, 1.5, 4.0},
                 {0.0, 0.0, 2.0, 5.0, 9.0, 9.0},
                 {0.0, 0.0, 0.0, -2.0, 9.0, 9.0}});
  auto out = reward_pair_loss(v, input, /*pad_id=*/2, /*npb=*/1);
  // pair 0: c_ind 4, r_ind 3, divergence 2 -> span [2, 4)
  const double pair0 = -(logsigmoid(1.0 - 2.0) + logsigmoid(3.0 - 5.0)) / 2.0;
  // pair 1: c_ind 6 (no pad after the BOS), r_ind 4, divergence 3 -> span [3, 6)
  const double pair1 = -(logsigmoid(1.0 - (-2.0)) + logsigmoid(1.5 - 9.0) + logsigmoid(4.0 - 9.0)) / 3.0;
  EXPECT_NEAR(out.loss.item<double>(), (pair0 + pair1) / 2.0, 1e-6);
  EXPECT_NEAR(out.chosen_scores[0].item<double>(), 3.0, 1e-6);
  EXPECT_NEAR(out.rejected_scores[0].item<double>(), 2.0, 1e-6);
  EXPECT_NEAR(out.chosen_scores[1].item<double>(), 4.0, 1e-6);
  EXPECT_NEAR(out.rejected_scores[1].item<double>(), -2.0, 1e-6);

  // Without skipping, the BOS itself would be the end: a clear error rather than DeepSpeed-Chat's index -1.
  EXPECT_THROW(reward_pair_loss(v, input, 2, 0), std::invalid_argument);
}

TEST(RewardLoss, GradientOnlyInsideTheSpan) {
  auto input = ids({{5, 6, 7, 8, 1, 1}, {5, 6, 9, 1, 1, 1}});
  auto v = at::zeros({2, 6}, at::kFloat).requires_grad_(true);
  reward_pair_loss(v, input, 1, 0).loss.backward();
  auto g = v.grad();
  // d/dx of -logsigmoid(x) at 0 is -0.5, averaged over the 2 span tokens.
  for (int64_t t = 0; t < 6; ++t) {
    const double expected = (t == 2 || t == 3) ? -0.25 : 0.0;
    EXPECT_NEAR(g[0][t].item<double>(), expected, 1e-7) << "chosen t=" << t;
    EXPECT_NEAR(g[1][t].item<double>(), -expected, 1e-7) << "rejected t=" << t;
  }
}

TEST(RewardLoss, BadInput) {
  auto v = at::zeros({2, 4});
  EXPECT_THROW(reward_pair_loss(v, ids({{5, 6, 1, 1}, {7, 6, 1, 1}}), 1, 0), std::invalid_argument);  // differ at 0
  EXPECT_THROW(reward_pair_loss(at::zeros({3, 4}), at::zeros({3, 4}, at::kLong), 1, 0), c10::Error);   // odd rows
  EXPECT_THROW(reward_pair_loss(at::zeros({2, 4}), at::zeros({2, 5}, at::kLong), 1, 0), c10::Error);   // shapes
}

TEST(RewardLoss, EndScoresForPpo) {
  // Prompt of 3 tokens; the first pad at or after it ends the answer; no pad: the last token.
  auto input = ids({{1, 5, 6, 7, 8, 1}, {1, 5, 6, 9, 9, 9}, {1, 5, 6, 1, 1, 1}});
  auto v = vals({{0, 1, 2, 3, 4, 5}, {0, 1, 2, 3, 4, 5}, {0, 1, 2, 3, 4, 5}});
  auto s = end_scores(v, input, 1, 3);
  EXPECT_NEAR(s[0].item<double>(), 4.0, 1e-6);
  EXPECT_NEAR(s[1].item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(s[2].item<double>(), 2.0, 1e-6);
}
