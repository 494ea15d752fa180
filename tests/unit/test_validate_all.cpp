// `dschat validate` reports every problem it can find in one pass, in file order, each at file:line:col with its
// key path, and exits 2: independent mistakes in several tables, a model folder whose weights or tokenizer are
// broken (found before any stage trains), sizes the machine cannot hold, a ppo stage that cannot generate or has
// no pretraining texts for PTX.
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/sdk/config.h"
#include "dschat/sdk/model.h"
#include "plugin_helpers.h"

namespace fs = std::filesystem;
using dschat::testing::run_dschat;

namespace {

const fs::path kOut = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "validate-all";
const std::string kModel = std::string(DSCHAT_SOURCE_DIR) + "/configs/quickstart/model";
const std::string kData = std::string(DSCHAT_SOURCE_DIR) + "/configs/quickstart/data/requests.jsonl";

fs::path write(const std::string& name, const std::string& text) {
  fs::create_directories(kOut);
  std::ofstream(kOut / name) << text;
  return kOut / name;
}

// Where `needle` starts in `haystack` (npos when absent), for ordering checks.
size_t at(const std::string& haystack, const std::string& needle) { return haystack.find(needle); }

TEST(ValidateAll, ReportsEveryErrorInFileOrder) {
  auto file = write("many.toml", fmt::format(R"([pipeline]
name = "many"
sede = 3

[models.actor]
path = "{0}"
init = "random"
dtype = "fp64"

[data]
datasets = ["{1}"]
max_seq_len = 96
max_prompt_seq_len = 200

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
learning_rate = nan

[[stage]]
name = "rm"
algorithm = "reward"
model = "critic"
)",
                                             kModel, kData));
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  const std::string f = file.string();
  const std::vector<std::string> expected = {
      f + ":3:8: pipeline.sede: unknown key",
      f + ":8:9: models.actor.dtype:",
      f + ":13:22: data.max_prompt_seq_len: must be below max_seq_len",
      f + ":19:17: stage.sft.learning_rate: must be a finite number",
      f + ":24:9: stage.rm.model: 'critic' is neither a [models.*] entry nor an earlier stage",
  };
  size_t last = 0;
  for (const auto& line : expected) {
    const size_t pos = at(result.output, "error: " + line);
    ASSERT_NE(pos, std::string::npos) << line << "\n" << result.output;
    EXPECT_GE(pos, last) << "out of file order: " << line << "\n" << result.output;
    last = pos;
  }
  EXPECT_NE(result.output.find("5 errors"), std::string::npos) << result.output;
}

// An SFT pipeline that also names `critic` as a pretrained model: its folder is checked at line 9.
fs::path sft_pipeline_with_critic(const std::string& name, const fs::path& critic) {
  return write(name + ".toml", fmt::format(R"([pipeline]
name = "{3}"

[models.actor]
path = "{0}"
init = "random"

[models.critic]
path = "{2}"

[data]
datasets = ["{1}"]

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
)",
                                           kModel, kData, critic.string(), name));
}

// A critic folder with a truncated weights file and a malformed tokenizer: both found by validate, at the key
// that names the folder, before the actor's SFT stage would have trained.
TEST(ValidateAll, BrokenModelFolderIsFoundBeforeAnyStageRuns) {
  const fs::path broken = kOut / "broken-critic";
  fs::remove_all(broken);
  fs::create_directories(broken);
  fs::copy_file(kModel + "/config.json", broken / "config.json");
  std::ofstream(broken / "model.safetensors") << "\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":";
  std::ofstream(broken / "tokenizer.json") << "{\"model\": ";
  auto file = sft_pipeline_with_critic("broken", broken);
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(file.string() + ":9:8: models.critic.path: weights:"), std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find("; tokenizer: "), std::string::npos) << result.output;
}

// Weights that do not fit their config.json (here: written for a wider fc1 than config.json says) are found by
// validate from the headers, naming the tensor and both shapes, instead of after the stages before it trained.
TEST(ValidateAll, WeightsThatDoNotFitTheirConfigAreFoundFromTheHeader) {
  const fs::path folder = kOut / "mismatched-critic";
  fs::remove_all(folder);
  auto config = nlohmann::json::parse(std::ifstream(kModel + "/config.json"));
  auto family = dschat::testing::registry().create<dschat::ModelFamily>("opt", dschat::testing::table(""));
  auto model = family->build(config, dschat::ModelOptions{});
  family->export_hf(*model, folder);
  fs::copy_file(kModel + "/tokenizer.json", folder / "tokenizer.json");
  const int64_t ffn = config["ffn_dim"].get<int64_t>();
  config["ffn_dim"] = ffn / 2;  // the weights keep the full width
  std::ofstream(folder / "config.json") << config.dump(2);
  auto file = sft_pipeline_with_critic("mismatched", folder);
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  const std::string expected = fmt::format(
      "{}:9:8: models.critic.path: weights: checkpoint {}: tensor 'model.decoder.layers.0.fc1.weight' has shape "
      "[{}, {}] but config.json implies [{}, {}]",
      file.string(), folder.string(), ffn, config["hidden_size"].get<int64_t>(), ffn / 2,
      config["hidden_size"].get<int64_t>());
  EXPECT_NE(result.output.find(expected), std::string::npos) << expected << "\n" << result.output;
}

// A random-init model's config.json is read by its family at validate time: a missing key is found before any
// stage runs, at the model's path, naming the key.
TEST(ValidateAll, RandomInitConfigTheFamilyCannotBuildIsRefused) {
  const fs::path folder = kOut / "no-ffn-dim";
  fs::remove_all(folder);
  fs::create_directories(folder);
  auto config = nlohmann::json::parse(std::ifstream(kModel + "/config.json"));
  config.erase("ffn_dim");
  std::ofstream(folder / "config.json") << config.dump(2);
  fs::copy_file(kModel + "/tokenizer.json", folder / "tokenizer.json");
  auto file = write("no-ffn-dim.toml", fmt::format(R"([pipeline]
name = "no-ffn-dim"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
)",
                                                   folder.string(), kData));
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(file.string() + ":5:8: models.actor.path: config.json:"), std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find("ffn_dim"), std::string::npos) << result.output;
}

TEST(ValidateAll, SizesTheMachineCannotHoldAreRefused) {
  const fs::path huge = kOut / "huge-model";
  fs::create_directories(huge);
  std::ofstream(huge / "config.json") << R"({"model_type": "opt", "hidden_size": 1000000000, "num_hidden_layers": 2,
    "ffn_dim": 4, "num_attention_heads": 1, "vocab_size": 640, "max_position_embeddings": 128,
    "word_embed_proj_dim": 1000000000, "do_layer_norm_before": true})";
  fs::copy_file(kModel + "/tokenizer.json", huge / "tokenizer.json", fs::copy_options::overwrite_existing);
  auto file = write("huge.toml", fmt::format(R"([pipeline]
name = "huge"

[models.actor]
path = "{0}"
init = "random"

[models.small]
path = "{2}"
init = "random"

[data]
datasets = ["{1}"]
max_seq_len = 1000000000000
max_prompt_seq_len = 32

[[stage]]
name = "sft"
algorithm = "sft"
model = "small"
)",
                                             huge.string(), kData, kModel));
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("models.actor.path:"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("GB, and this machine has"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("data.max_seq_len: 1000000000000 exceeds the max_position_embeddings"),
            std::string::npos) << result.output;
  EXPECT_EQ(result.output.find("Backtrace"), std::string::npos) << result.output;
}

// A tensor-parallel layout that does not divide the model is found by validate (the launcher's world size is the
// default tp_size), not when the stage starts.
TEST(ValidateAll, TensorParallelLayoutThatDoesNotDivideIsRefused) {
  const fs::path folder = kOut / "two-heads";
  fs::remove_all(folder);
  fs::create_directories(folder);
  auto config = nlohmann::json::parse(std::ifstream(kModel + "/config.json"));
  config["num_attention_heads"] = 2;
  std::ofstream(folder / "config.json") << config.dump(2);
  fs::copy_file(kModel + "/tokenizer.json", folder / "tokenizer.json");
  auto file = write("tp-two-heads.toml", fmt::format(R"([pipeline]
name = "tp-two-heads"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]
max_seq_len = 96
max_prompt_seq_len = 32

[strategy]
plugin = "tp"

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
)",
                                                     folder.string(), kData));
  auto refused = run_dschat("validate " + file.string(), "WORLD_SIZE=4 RANK=0");
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("stage sft: strategy 'tp' cannot split role 'model' (actor): tensor parallelism over "
                                "4 ranks needs num_heads (2 attention heads) to be a multiple of 4"),
            std::string::npos) << refused.output;
  EXPECT_EQ(refused.output.find("Backtrace"), std::string::npos) << refused.output;
  // Over 2 ranks the same model divides.
  auto accepted = run_dschat("validate " + file.string(), "WORLD_SIZE=2 RANK=0");
  EXPECT_EQ(accepted.exit_code, 0) << accepted.output;
}

TEST(ValidateAll, PpoWithoutGenerationIsRefused) {
  auto file = write("ppo.toml", fmt::format(R"([pipeline]
name = "ppo"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]

[[stage]]
name = "rlhf"
algorithm = "ppo"
actor = "actor"
critic = "actor"
)",
                                            kModel, kData));
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("stage.rlhf: the ppo stage generates its rollouts: add generation ="), std::string::npos)
      << result.output;
}

TEST(ValidateAll, PtxWithoutPretrainingTextsIsRefused) {
  auto file = write("ptx.toml", fmt::format(R"([pipeline]
name = "ptx"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]

[[stage]]
name = "rlhf"
algorithm = "ppo"
actor = "actor"
critic = "actor"
enable_ptx = true
generation = {{ plugin = "kv-cache" }}
)",
                                            kModel, kData));
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(file.string() + ":16:14: stage.rlhf.enable_ptx: PTX mixes pretraining texts"),
            std::string::npos) << result.output;
}

// A reward stage given only single-answer data, and a PPO stage whose share of the split is 0: each would find
// nothing to train on, and says so at validate.
TEST(ValidateAll, StagesThatWouldFindNoDataAreRefused) {
  fs::create_directories(kOut);
  std::ofstream(kOut / "answers.jsonl") << "{\"prompt\": \"hi\", \"response\": \"hello\"}\n";
  auto file = write("needs.toml", fmt::format(R"([pipeline]
name = "needs"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]
split = [2, 4, 0]

[[stage]]
name = "rm"
algorithm = "reward"
model = "actor"

[[stage]]
name = "rlhf"
algorithm = "ppo"
actor = "actor"
critic = "rm"
generation = {{ plugin = "kv-cache" }}
)",
                                              kModel, (kOut / "answers.jsonl").string()));
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(":14:13: stage.rm.algorithm: reward trains on the reward share of [data], which no "
                               "dataset feeds (split = [2, 4, 0]; single-answer datasets feed only SFT)"),
            std::string::npos) << result.output;
  EXPECT_NE(result.output.find(":19:13: stage.rlhf.algorithm: ppo trains on the PPO share"), std::string::npos)
      << result.output;
  // Pair data feeds the reward share: the same reward stage is fine.
  auto ok = write("needs-ok.toml", fmt::format(R"([pipeline]
name = "needs-ok"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "rm"
algorithm = "reward"
model = "actor"
)",
                                               kModel, kData));
  auto fine = run_dschat("validate " + ok.string());
  EXPECT_EQ(fine.exit_code, 0) << fine.output;
}

// Bytes that are not UTF-8, in a data row or a pipeline value, are quoted as \xNN escapes, never written raw.
TEST(ValidateAll, InvalidUtf8IsEscapedInMessages) {
  EXPECT_EQ(dschat::printable_text("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac");  // valid: unchanged
  EXPECT_EQ(dschat::printable_text("a\xff\xfe" "b"), "a\\xff\\xfeb");
  EXPECT_EQ(dschat::printable_text("\xc0\xaf"), "\\xc0\\xaf");           // overlong '/'
  EXPECT_EQ(dschat::printable_text("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a UTF-16 surrogate
  EXPECT_EQ(dschat::printable_text("x\x1b[31m"), "x\\x1b[31m");             // a terminal escape
  fs::create_directories(kOut);
  std::ofstream(kOut / "bad-utf8.jsonl") << "{\"prompt\": \"a\xff\", \"chosen\": \"b\", \"rejected\": \"c\"}\n";
  auto file = write("utf8.toml", fmt::format(R"([pipeline]
name = "utf8"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]

[[stage]]
name = "sft"
algorithm = "{2}"
model = "actor"
)",
                                             kModel, (kOut / "bad-utf8.jsonl").string(), "sf\xc3\xa9t"));
  auto result = run_dschat("validate " + file.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("\\xff"), std::string::npos) << result.output;
  EXPECT_EQ(result.output.find('\xff'), std::string::npos) << "a raw invalid byte was printed";
  EXPECT_NE(result.output.find("no algorithm plugin named 'sf\xc3\xa9t'"), std::string::npos) << result.output;
}

// A stage's rewards = [...]: each plugin is created at load, its weight read by the host; an unknown plugin, a
// model that is neither a [models.*] entry nor an earlier stage, and a data field some row lacks are refused at
// the reward's table before any work; so is a stage that lists rewards and names a reward model too. A ppo stage
// with valid rewards validates.
TEST(ValidateAll, RewardsAreCheckedAtTheirTables) {
  fs::create_directories(kOut);
  {
    std::ofstream rows(kOut / "math.jsonl");
    for (int i = 0; i < 6; ++i)
      rows << "{\"prompt\": \"" << i << " + 1?\", \"chosen\": \"" << i + 1 << "\", \"rejected\": \"0\""
           << (i == 3 ? std::string() : ", \"answer\": " + std::to_string(i + 1)) << "}\n";
  }
  const std::string head = fmt::format(R"([pipeline]
name = "rewards"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "rlhf"
algorithm = "ppo"
actor = "actor"
critic = "actor"
generation = {{ plugin = "kv-cache" }}
)",
                                       kModel, (kOut / "math.jsonl").string());
  auto bad = write("rewards-bad.toml", head + R"(rewards = [{ plugin = "exact-answr" },
           { plugin = "reward-model", model = "actr", weight = 0.5 },
           { plugin = "exact-answer", field = "answer", weight = 2 }]
)");
  auto result = run_dschat("validate " + bad.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  // One stage, one error: the first reward's (the stage is read up to its first problem).
  EXPECT_NE(result.output.find(bad.string() + ":19:23: stage.rlhf.rewards[0].plugin: no reward plugin named "
                               "'exact-answr'; available: exact-answer, length-penalty, reward-model"),
            std::string::npos)
      << result.output;

  auto model = write("rewards-model.toml", head + R"(rewards = [{ plugin = "reward-model", model = "actr" }]
)");
  result = run_dschat("validate " + model.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(model.string() + ":19:47: stage.rlhf.rewards[0].model: 'actr' is neither a "
                               "[models.*] entry nor an earlier stage (known: actor); did you mean 'actor'?"),
            std::string::npos)
      << result.output;

  auto field = write("rewards-field.toml", head + R"(rewards = [{ plugin = "length-penalty", max_tokens = 8 },
           { plugin = "exact-answer", weight = 2.0 }]
)");
  result = run_dschat("validate " + field.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(field.string() + ":20:12: stage.rlhf.rewards[1]: the exact-answer reward reads the "
                               "field 'answer' of every row, and " + (kOut / "math.jsonl").string() +
                               ":4 has none (a string or number field; rows lacking it: 1 of 6)"),
            std::string::npos)
      << result.output;
  auto other = write("rewards-other-field.toml", head + R"(rewards = [{ plugin = "exact-answer", field = "solution" }]
)");
  result = run_dschat("validate " + other.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(other.string() + ":19:47: stage.rlhf.rewards[0].field: the exact-answer reward reads "
                               "the field 'solution' of every row, and " + (kOut / "math.jsonl").string() + ":1 has none"),
            std::string::npos)
      << result.output;

  // Every row carries the field: the stage validates, weights and all.
  {
    std::ofstream rows(kOut / "math.jsonl");
    for (int i = 0; i < 6; ++i)
      rows << "{\"prompt\": \"" << i << " + 1?\", \"chosen\": \"" << i + 1 << "\", \"rejected\": \"0\", \"answer\": "
           << i + 1 << "}\n";
  }
  auto fine = write("rewards-ok.toml", head + R"(rewards = [{ plugin = "reward-model", model = "actor" },
           { plugin = "exact-answer", weight = 2.0, pattern = '= (\d+)' },
           { plugin = "length-penalty", max_tokens = 8, weight = 0.5 }]
)");
  result = run_dschat("validate " + fine.string());
  EXPECT_EQ(result.exit_code, 0) << result.output;
  auto both = write("rewards-and-reward.toml", head + R"(reward = "actor"
rewards = [{ plugin = "length-penalty", max_tokens = 8 }]
)");
  result = run_dschat("validate " + both.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find(both.string() + ":19:10: stage.rlhf.reward: the stage lists rewards, which replace "
                               "the reward model"),
            std::string::npos)
      << result.output;
  auto typo = write("rewards-typo.toml", head + R"(rewards = [{ plugin = "length-penalty", max_tokens = 8, wieght = 0.5 }]
)");
  result = run_dschat("validate " + typo.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("stage.rlhf.rewards[0].wieght: unknown key"), std::string::npos) << result.output;
}

// grpo and rloo compare each answer with the other answers to its prompt: num_samples = 1 is refused at its line
// by validate, before any stage runs.
TEST(ValidateAll, GroupAlgorithmsNeedTwoSamplesPerPrompt) {
  for (const std::string algorithm : {"grpo", "rloo"}) {
    auto file = write(algorithm + "-one-sample.toml", fmt::format(R"([pipeline]
name = "group"

[models.actor]
path = "{0}"
init = "random"

[data]
datasets = ["{1}"]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "rl"
algorithm = "{2}"
actor = "actor"
num_samples = 1
rewards = [{{ plugin = "length-penalty", max_tokens = 8 }}]
generation = {{ plugin = "kv-cache", do_sample = true }}
)",
                                                               kModel, kData, algorithm));
    auto result = run_dschat("validate " + file.string());
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_NE(result.output.find(file.string() + ":17:15: stage.rl.num_samples: " + algorithm +
                                 " compares each answer with the other answers to its prompt: it needs at least 2 "
                                 "samples per prompt, got 1"),
              std::string::npos)
        << result.output;
  }
}

}  // namespace
