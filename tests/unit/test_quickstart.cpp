// End to end: `dschat run configs/quickstart.toml` as a user runs it (all three steps, about 30 s on two quiet
// cores), then the checks DESIGN §7 asks for: SFT perplexity falls, the reward model beats chance on held-out
// pairs, PPO raises the held-out mean reward (actor and EMA), a second run reuses every stage, and
// `dschat generate` answers from the final actor folder.
#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"

namespace fs = std::filesystem;
using dschat::testing::run_command;
using dschat::testing::run_dschat;

namespace {

// tag -> values in step order, from a stage's metrics.jsonl.
std::map<std::string, std::vector<double>> read_metrics(const fs::path& file) {
  std::map<std::string, std::vector<double>> out;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    auto row = nlohmann::json::parse(line);
    out[row["tag"].get<std::string>()].push_back(row["value"].get<double>());
  }
  return out;
}

class Quickstart : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(out_dir());
    first_run_ = run_dschat(std::string("run ") + DSCHAT_SOURCE_DIR + "/configs/quickstart.toml --set 'pipeline.output_dir=\"" +
                            out_dir().string() + "\"'");
  }
  static fs::path out_dir() { return fs::path(DSCHAT_BINARY_DIR) / "test-output" / "quickstart"; }
  static dschat::testing::CommandResult first_run_;
};
dschat::testing::CommandResult Quickstart::first_run_;

}  // namespace

TEST_F(Quickstart, RunsAllThreeStepsIntoTheRunFolder) {
  ASSERT_EQ(first_run_.exit_code, 0) << first_run_.output;
  for (const char* stage : {"sft", "rm", "rlhf"}) {
    EXPECT_TRUE(fs::exists(out_dir() / stage / "final" / "COMPLETE")) << stage;
    EXPECT_TRUE(fs::exists(out_dir() / stage / "final" / "config.json")) << stage;
    EXPECT_TRUE(fs::exists(out_dir() / stage / "metrics.jsonl")) << stage;
    EXPECT_TRUE(fs::is_directory(out_dir() / stage / "tensorboard")) << stage;
  }
  EXPECT_TRUE(fs::exists(out_dir() / "rlhf" / "ema" / "config.json"));
  EXPECT_TRUE(fs::exists(out_dir() / "pipeline.resolved.toml"));
}

TEST_F(Quickstart, EachStepDoesItsJob) {
  ASSERT_EQ(first_run_.exit_code, 0) << first_run_.output;
  auto sft = read_metrics(out_dir() / "sft" / "metrics.jsonl");
  ASSERT_GE(sft["eval/perplexity"].size(), 2u);
  EXPECT_LT(sft["eval/perplexity"].back(), sft["eval/perplexity"].front() / 10);

  auto rm = read_metrics(out_dir() / "rm" / "metrics.jsonl");
  ASSERT_FALSE(rm["eval/accuracy"].empty());
  EXPECT_GE(rm["eval/accuracy"].back(), 0.9) << "chance is 0.5";

  auto rlhf = read_metrics(out_dir() / "rlhf" / "metrics.jsonl");
  ASSERT_GE(rlhf["eval/reward"].size(), 2u);
  const double sft_reward = rlhf["eval/reward"].front();
  EXPECT_GT(rlhf["eval/reward"].back(), sft_reward + 0.1);
  ASSERT_FALSE(rlhf["eval/ema_reward"].empty());
  EXPECT_GT(rlhf["eval/ema_reward"].back(), sft_reward + 0.1);
  EXPECT_LT(rlhf["eval/kl"].back(), 5.0) << "the actor drifted far from the reference";
  for (double diff : rlhf["consistency/max_abs_diff"]) EXPECT_LT(diff, 1e-3);
}

TEST_F(Quickstart, ASecondRunReusesCompleteStages) {
  ASSERT_EQ(first_run_.exit_code, 0) << first_run_.output;
  auto again = run_dschat(std::string("run ") + DSCHAT_SOURCE_DIR + "/configs/quickstart.toml --set 'pipeline.output_dir=\"" +
                          out_dir().string() + "\"'");
  EXPECT_EQ(again.exit_code, 0) << again.output;
  for (const char* stage : {"sft", "rm", "rlhf"})
    EXPECT_NE(again.output.find(std::string("stage ") + stage + ": reusing"), std::string::npos) << again.output;
}

TEST_F(Quickstart, GenerateAnswersFromTheFinalActor) {
  ASSERT_EQ(first_run_.exit_code, 0) << first_run_.output;
  auto result = run_dschat("generate --model " + (out_dir() / "rlhf" / "final").string() +
                           " --prompt ' Human: Greet me. Assistant:' --greedy --max-new-tokens 16");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output.rfind(" Human: Greet me. Assistant:", 0), 0u) << result.output;
  EXPECT_GT(result.output.size(), std::string(" Human: Greet me. Assistant:\n").size()) << result.output;
}
