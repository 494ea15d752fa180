// The `dpo` algorithm: DeepSpeed-Chat's step2_dpo arithmetic (dschat/sdk/preference_loss.h) against hand-worked
// numbers, and a short DPO stage through the host registry on the quickstart's pairs.
#include <gtest/gtest.h>

#include <ATen/ops/tensor.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dschat/framework/pipeline.h"
#include "dschat/framework/registry.h"
#include "dschat/framework/runner.h"
#include "dschat/sdk/preference_loss.h"
#include "plugin_helpers.h"

namespace fs = std::filesystem;
using namespace dschat;

namespace {

at::Tensor longs(std::vector<std::vector<int64_t>> rows) {
  std::vector<int64_t> flat;
  for (auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return at::tensor(flat, at::kLong).reshape({static_cast<int64_t>(rows.size()), -1});
}

std::vector<double> values_of(const fs::path& stage_dir, const std::string& tag) {
  std::vector<double> out;
  std::ifstream in(stage_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto row = nlohmann::json::parse(line);
    if (row["tag"] == tag && row["value"].is_number()) out.push_back(row["value"].get<double>());
  }
  return out;
}

}  // namespace

// Two pairs, beta 0.1. Pair 0: chosen log-ratio -1 - (-1.5) = 0.5, rejected -2 - (-1.5) = -0.5, logits
// 0.1 * (0.5 + 0.5) = 0.1, loss log(1 + e^-0.1) = 0.644397. Pair 1: -3 - (-2) = -1 and -1 - (-1.5) = 0.5,
// logits -0.15, loss log(1 + e^0.15) = 0.770957. Mean 0.707677. With label_smoothing 0.2 each loss becomes
// 0.8 * l(x) + 0.2 * (l(x) + x): 0.664397 and 0.740957, mean 0.702677.
TEST(DpoLoss, HandWorkedNumbers) {
  auto pc = at::tensor({-1.0, -3.0}), pr = at::tensor({-2.0, -1.0});
  auto rc = at::tensor({-1.5, -2.0}), rr = at::tensor({-1.5, -1.5});
  auto out = dpo_loss(pc, pr, rc, rr, 0.1, 0.0);
  EXPECT_NEAR(out.loss.item<double>(), 0.707677, 1e-6);
  EXPECT_NEAR(out.chosen_rewards[0].item<double>(), 0.05, 1e-12);
  EXPECT_NEAR(out.chosen_rewards[1].item<double>(), -0.1, 1e-12);
  EXPECT_NEAR(out.rejected_rewards[0].item<double>(), -0.05, 1e-12);
  EXPECT_NEAR(out.rejected_rewards[1].item<double>(), 0.05, 1e-12);
  EXPECT_NEAR(dpo_loss(pc, pr, rc, rr, 0.1, 0.2).loss.item<double>(), 0.702677, 1e-6);
  // The policy equal to the reference: every margin 0, the loss log 2.
  EXPECT_NEAR(dpo_loss(rc, rr, rc, rr, 0.1, 0.0).loss.item<double>(), std::log(2.0), 1e-12);
  EXPECT_THROW(dpo_loss(pc, pr, rc, rr, 0.0, 0.0), c10::Error);
  EXPECT_THROW(dpo_loss(pc, pr, rc, rr, 0.1, 0.5), c10::Error);
}

TEST(DpoLoss, GradientRaisesTheChosenAndLowersTheRejected) {
  auto pc = at::tensor({-1.0}).requires_grad_(), pr = at::tensor({-1.0}).requires_grad_();
  auto ref = at::tensor({-1.0});
  dpo_loss(pc, pr, ref, ref, 0.1, 0.0).loss.backward();
  // d/dpc of -logsigmoid(0.1 (pc - pr)) at 0: -0.1 * sigmoid(0) = -0.05; the rejected +0.05.
  EXPECT_NEAR(pc.grad().item<double>(), -0.05, 1e-9);
  EXPECT_NEAR(pr.grad().item<double>(), 0.05, 1e-9);
}

// Rows [chosen..., rejected...]: a pair is scored from its first differing token (index 2 here), padding never;
// an identical pair on every real token.
TEST(DpoLoss, PairLabelMaskStartsWhereThePairDiffers) {
  auto ids = longs({{5, 6, 7, 8, 1}, {5, 6, 7, 1, 1}, {5, 6, 9, 1, 1}, {5, 6, 7, 1, 1}});
  auto mask = longs({{1, 1, 1, 1, 0}, {1, 1, 1, 0, 0}, {1, 1, 1, 0, 0}, {1, 1, 1, 0, 0}});
  auto labels = pair_label_mask(ids, mask);
  EXPECT_TRUE(labels.equal(longs({{0, 0, 1, 1, 0}, {1, 1, 1, 0, 0}, {0, 0, 1, 0, 0}, {1, 1, 1, 0, 0}})))
      << labels;
}

// Vocabulary of 2; position 0's logits [0, 0] give token 1 probability 1/2, position 1's [log 3, 0] give token 0
// probability 3/4. ids [0, 1, 0]: log(1/2) + log(3/4) = -0.980829 with both targets counted, -0.287682 with the
// first masked; position 2's logits predict nothing.
TEST(DpoLoss, SequenceLogprobsSumTheMaskedTargets) {
  auto logits = at::tensor({0.0, 0.0, std::log(3.0), 0.0, 5.0, -5.0}).reshape({1, 3, 2});
  auto ids = longs({{0, 1, 0}});
  EXPECT_NEAR(sequence_logprobs(logits, ids, longs({{1, 1, 1}}))[0].item<double>(), -0.980829, 1e-6);
  EXPECT_NEAR(sequence_logprobs(logits, ids, longs({{1, 0, 1}}))[0].item<double>(), -0.287682, 1e-6);
}

// A short DPO stage on the quickstart's pairs from a random tiny OPT: at the start the policy is its reference
// (loss exactly log 2, margins 0); training raises the held-out reward accuracy and margin.
TEST(DpoStage, TrainsThePolicyAwayFromItsReferenceTowardTheChosen) {
  const fs::path quickstart = fs::path(DSCHAT_SOURCE_DIR) / "configs" / "quickstart";
  const fs::path root = fs::path(DSCHAT_BINARY_DIR) / "test-data" / "dpo-stage";
  fs::remove_all(root);
  fs::create_directories(root);
  std::ostringstream toml;
  toml << "[pipeline]\nname = \"dpo-test\"\noutput_dir = \"" << (root / "run").string() << "\"\nseed = 3\n"
       << "[models.base]\npath = \"" << (quickstart / "model").string() << "\"\ninit = \"random\"\n"
       << "[data]\ndatasets = [\"" << (quickstart / "data" / "requests.jsonl").string() << "\"]\n"
       << "split = [0, 1, 0]\neval_fraction = 0.05\nmax_seq_len = 96\nmax_prompt_seq_len = 32\n"
       << "[[stage]]\nname = \"dpo\"\nalgorithm = \"dpo\"\nmodel = \"base\"\nper_device_train_batch_size = 16\n"
       << "learning_rate = 1e-3\nlr_scheduler = \"constant\"\nmax_steps = 40\neval_iters = 4\nbeta = 0.1\n";
  const fs::path file = root / "pipeline.toml";
  std::ofstream(file) << toml.str();
  ASSERT_TRUE(run_pipeline(load_pipeline(file, {}, dschat::testing::registry()), dschat::testing::registry()));
  const fs::path stage = root / "run" / "dpo";
  auto loss = values_of(stage, "eval/loss"), accuracy = values_of(stage, "eval/reward_accuracy");
  auto margin = values_of(stage, "eval/reward_margin");
  ASSERT_GE(loss.size(), 2u);
  EXPECT_NEAR(loss.front(), std::log(2.0), 1e-5);
  EXPECT_NEAR(margin.front(), 0.0, 1e-5);
  EXPECT_LT(loss.back(), loss.front() - 0.05);
  EXPECT_GT(margin.back(), 0.5);
  EXPECT_GT(accuracy.back(), 0.8);
  EXPECT_FALSE(values_of(stage, "train/reward_accuracy").empty());
  EXPECT_TRUE(fs::exists(stage / "final" / "config.json"));
}
