// `dschat consolidate` on a reward model's sharded checkpoint: the folder it writes is the reward stage's own
// (base model, value head, reward_model.json), transformers loads it and scores texts exactly as it scores the
// stage's final/ folder; a checkpoint whose save did not finish is refused.
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using dschat::testing::run_command;
using dschat::testing::run_dschat;

namespace {

const fs::path kOut = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "consolidate";

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<double> transformers_scores(const fs::path& folder) {
  auto result = run_command(fmt::format(
      "{} {}/tests/scripts/score_reward_model.py {} 'Human: how do I boil an egg? Assistant: Put it in boiling water.' "
      "'Human: how do I boil an egg? Assistant: of of of of'",
      DSCHAT_TEST_PYTHON, DSCHAT_SOURCE_DIR, folder.string()));
  EXPECT_EQ(result.exit_code, 0) << result.output;
  return nlohmann::json::parse(result.output.substr(result.output.rfind('['))).get<std::vector<double>>();
}

TEST(Consolidate, RewardModelCheckpointBecomesTheRewardStagesFolder) {
  fs::create_directories(kOut);
  const fs::path file = kOut / "rm.toml";
  std::ofstream(file) << fmt::format(R"([pipeline]
name = "rm"
output_dir = "{0}"

[strategy]
plugin = "zero"
stage = 2

[models.critic]
path = "{1}/configs/quickstart/model"
init = "random"

[data]
datasets = ["{1}/configs/quickstart/data/requests.jsonl"]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "rm"
algorithm = "reward"
model = "critic"
max_steps = 6
checkpoint_interval = 6
per_device_train_batch_size = 8
learning_rate = 5e-4
)",
                                     (kOut / "run").string(), DSCHAT_SOURCE_DIR);
  fs::remove_all(kOut / "run");
  auto run = run_dschat("run " + file.string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const fs::path final_dir = kOut / "run" / "rm" / "final";
  const fs::path checkpoint = kOut / "run" / "rm" / "checkpoints" / "step-6";
  ASSERT_TRUE(fs::exists(checkpoint / "manifest.json")) << run.output;

  // --like the model the pipeline started from (no reward_model.json there): the conventions are derived the way
  // the reward stage derived them.
  const fs::path out = kOut / "consolidated";
  fs::remove_all(out);
  auto merged = run_dschat(fmt::format("consolidate {} --like {}/configs/quickstart/model --out {}", checkpoint.string(),
                                       DSCHAT_SOURCE_DIR, out.string()));
  ASSERT_EQ(merged.exit_code, 0) << merged.output;
  EXPECT_EQ(nlohmann::json::parse(read_text(out / "reward_model.json")),
            nlohmann::json::parse(read_text(final_dir / "reward_model.json")));
  for (const char* weights : {"model.safetensors", "value_head.safetensors"}) {
    auto a = dschat::safetensors::CheckpointReader::open(out / weights);
    auto b = dschat::safetensors::CheckpointReader::open(final_dir / weights);
    ASSERT_EQ(a.names(), b.names()) << weights;
    for (const auto& name : a.names()) EXPECT_TRUE(a.load(name).equal(b.load(name))) << weights << " " << name;
  }
  const auto expected = transformers_scores(final_dir);
  const auto got = transformers_scores(out);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got, expected);
  EXPECT_NE(got[0], got[1]);  // the head scores; it is not a constant
  std::cout << fmt::format("transformers scores of the consolidated reward model: {} / {}\n", got[0], got[1]);

  // A save that died before its last file.
  const fs::path broken = kOut / "broken-step";
  fs::remove_all(broken);
  fs::copy(checkpoint, broken, fs::copy_options::recursive);
  fs::remove(broken / "engine.json");
  auto refused = run_dschat(fmt::format("consolidate {} --like {} --out {}", broken.string(), final_dir.string(),
                                        (kOut / "never").string()));
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_NE(refused.output.find("is incomplete (no engine.json, which a save writes last)"), std::string::npos)
      << refused.output;
  EXPECT_FALSE(fs::exists(kOut / "never"));
}

}  // namespace
