// The `ppo` algorithm beyond ppo_math (tested in test_ppo_math.cpp): DeepSpeed-Chat's row dropping and reward
// scoring positions in a rollout, a short PPO run through the host registry that raises the mean held-out score of
// a synthetic reward model, and the hybrid engine's consistency check stopping a run whose generation path lies.
#include <gtest/gtest.h>

#include <ATen/Context.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dschat/sdk/rlhf/rewards.h"
#include "dschat/sdk/rlhf/rollout.h"
#include "cli_helpers.h"
#include "plugin_helpers.h"
#include "dschat/framework/pipeline.h"
#include "dschat/framework/registry.h"
#include "dschat/framework/runner.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using namespace dschat;

namespace {

const fs::path kQuickstart = fs::path(DSCHAT_SOURCE_DIR) / "configs" / "quickstart";

using dschat::testing::registry;

at::Tensor ids(std::vector<std::vector<int64_t>> rows) {
  std::vector<int64_t> flat;
  for (auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return at::tensor(flat, at::kLong).reshape({static_cast<int64_t>(rows.size()), -1});
}

std::vector<nlohmann::json> read_metrics(const fs::path& stage_dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(stage_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}
std::vector<double> values_of(const std::vector<nlohmann::json>& rows, const std::string& tag) {
  std::vector<double> out;
  for (const auto& r : rows)
    if (r["tag"] == tag && r["value"].is_number()) out.push_back(r["value"].get<double>());
  return out;
}

// A folder with the quickstart's tiny OPT config and tokenizer (built with random weights by the pipeline) and a
// synthetic reward: value_head.safetensors with a fixed random direction, so the score of an answer is that
// direction times the final hidden state at its last token.
fs::path make_models(const fs::path& root) {
  const fs::path model = root / "model";
  fs::create_directories(model);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kQuickstart / "model" / f, model / f, fs::copy_options::overwrite_existing);
  at::manual_seed(7);
  const int64_t hidden = 128;
  auto head = at::randn({1, hidden}) * (3.0 / std::sqrt(static_cast<double>(hidden)));
  safetensors::save_file(model / "value_head.safetensors", {{"v_head.weight", head}});
  return model;
}

fs::path write_pipeline(const fs::path& root, const std::string& ppo_extra, const std::string& data_extra = "") {
  const fs::path model = make_models(root);
  std::ostringstream toml;
  toml << "[pipeline]\nname = \"ppo-test\"\noutput_dir = \"" << (root / "run").string() << "\"\nseed = 11\n"
       << "[models.actor]\npath = \"" << model.string() << "\"\ninit = \"random\"\n"
       << "[models.rm]\npath = \"" << model.string() << "\"\ninit = \"random\"\n"
       << "[data]\ndatasets = [\"" << (kQuickstart / "data" / "requests.jsonl").string() << "\"]\n"
       << "split = [0, 0, 1]\neval_fraction = 0.02\nmax_seq_len = 96\nmax_prompt_seq_len = 32\n" << data_extra
       << "[[stage]]\nname = \"rlhf\"\nalgorithm = \"ppo\"\nactor = \"actor\"\ncritic = \"rm\"\n"
       << "per_device_generation_batch_size = 16\nper_device_training_batch_size = 16\n"
       << "actor_learning_rate = 3e-3\ncritic_learning_rate = 1e-3\nnum_warmup_steps = 0\n"
       << "lr_scheduler = \"constant\"\neval_prompts = 32\n"
       << "generation = { plugin = \"kv-cache\", max_new_tokens = 3, do_sample = true }\n"
       << "hooks = [{ plugin = \"ema\", beta = 0.5 }]\n"
       << ppo_extra;
  const fs::path file = root / "pipeline.toml";
  std::ofstream(file) << toml.str();
  return file;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::path(DSCHAT_BINARY_DIR) / "test-data" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST(PpoRollout, DropsRowsWithAtMostOneAnswerToken) {
  // pad = 1; prompts are 3 columns (the first row's BOS is the pad id, as OPT's </s> is, and must not count).
  auto seq = ids({{1, 4, 4, 1, 1, 1},    // empty answer
                  {1, 4, 4, 5, 1, 1},    // one token: dropped, as DeepSpeed-Chat's valid_ans_len > 1 check does
                  {4, 4, 4, 5, 6, 1},    // two tokens: kept
                  {1, 1, 4, 5, 6, 7}});  // full answer, left-padded prompt: kept
  auto keep = rlhf::rows_to_keep(seq, 3, 1);
  ASSERT_EQ(keep.numel(), 2);
  EXPECT_EQ(keep[0].item<int64_t>(), 2);
  EXPECT_EQ(keep[1].item<int64_t>(), 3);
  // The training-side mask hides BOS, prompt padding and the answer's padding alike.
  auto mask = rlhf::experience_mask(seq, 1);
  EXPECT_EQ(mask[0].sum().item<int64_t>(), 2);
  EXPECT_EQ(mask[3].sum().item<int64_t>(), 4);

  auto m = ids({{0, 0, 1, 1}, {0, 1, 1, 1}});
  auto x = ids({{9, 9, 2, 3}, {9, 4, 5, 6}});
  rlhf::trim_left_padding(x, m);
  EXPECT_TRUE(x.equal(ids({{9, 2, 3}, {4, 5, 6}})));
  EXPECT_TRUE(m.equal(ids({{0, 1, 1}, {1, 1, 1}})));
}

TEST(PpoRollout, ScoresTheLastAnswerTokenBeforeEos) {
  auto family = registry().create<ModelFamily>("opt", ConfigDocument::parse_string("", "<test>", ".")->root());
  at::manual_seed(3);
  auto config = read_hf_config(kQuickstart / "model");
  auto model = std::make_shared<RewardModel>(family->build(config, {}));
  auto& rm = *model;
  {
    at::NoGradGuard no_grad;
    rm.v_head->weight.normal_();
  }
  at::NoGradGuard no_grad;
  const int64_t pad = 0, P = 3;  // pad == eos == BOS, as in the quickstart tokenizer
  // Row 0 ends with eos then padding; row 1 fills every column (no eos).
  auto seq = ids({{0, 17, 18, 30, 31, 0, 0, 0}, {0, 20, 21, 40, 41, 42, 43, 44}});
  auto scores = rlhf::reward_model_scores(rm, seq, pad, P);
  // Reference: the reward model on the row cut right after its last answer token, nothing after it.
  auto cut = seq.slice(0, 0, 1).slice(1, 0, 5);
  auto expected0 = rm.values(cut, rlhf::experience_mask(cut, pad))[0][4].item<double>();
  auto full = rm.values(seq, rlhf::experience_mask(seq, pad));
  EXPECT_NEAR(scores[0].item<double>(), expected0, 1e-5);
  EXPECT_GT(std::abs(scores[0].item<double>() - full[0][3].item<double>()), 1e-4);  // not the token before
  EXPECT_NEAR(scores[1].item<double>(), full[1][7].item<double>(), 1e-6);         // no eos: the last column
}

TEST(Ppo, ShortRunRaisesTheHeldOutScoreAndWritesItsOutputs) {
  const fs::path root = fresh_dir("ppo-run");
  auto file = write_pipeline(root, "max_steps = 12\nkl_ctl = 0.05\n");
  auto pipeline = load_pipeline(file, {}, registry());
  ASSERT_TRUE(run_pipeline(pipeline, registry()));

  const fs::path stage = root / "run" / "rlhf";
  auto rows = read_metrics(stage);
  auto eval = values_of(rows, "eval/reward");
  ASSERT_GE(eval.size(), 2u);
  EXPECT_GT(eval.back(), eval.front() + 0.5) << "held-out mean score from " << eval.front() << " to " << eval.back();
  auto diffs = values_of(rows, "consistency/max_abs_diff");
  ASSERT_EQ(diffs.size(), 12u);  // one check per rollout
  for (double d : diffs) EXPECT_LT(d, 1e-3);
  for (const char* tag : {"reward/mean", "kl/mean", "actor/loss", "critic/loss", "time/generation_s",
                          "time/training_s", "samples_per_s", "tflops_generation", "tflops_training",
                          "eval/ema_reward", "eval/kl"})
    EXPECT_FALSE(values_of(rows, tag).empty()) << tag;
  for (const char* f : {"final/config.json", "final/tokenizer.json", "ema/config.json", "critic/value_head.safetensors",
                        "critic/reward_model.json"})
    EXPECT_TRUE(fs::exists(stage / f)) << f;
}

// A stage that lists rewards scores with them, not with the reward role: with length-penalty at max_tokens = 1
// every kept answer (2 or 3 tokens; rows of <= 1 token are dropped) scores exactly -1 or -2, which no reward
// model's value head gives run after run.
TEST(Ppo, ListedRewardsReplaceTheRewardModel) {
  const fs::path root = fresh_dir("ppo-rule-reward");
  auto file = write_pipeline(root, "max_steps = 4\nrewards = [{ plugin = \"length-penalty\", max_tokens = 1 }]\n");
  auto pipeline = load_pipeline(file, {}, registry());
  ASSERT_TRUE(run_pipeline(pipeline, registry()));
  auto rows = read_metrics(root / "run" / "rlhf");
  auto rewards = values_of(rows, "reward/mean");
  ASSERT_EQ(rewards.size(), 4u);
  for (double r : rewards) {
    EXPECT_GE(r, -2.0 - 1e-9);
    EXPECT_LE(r, -1.0 + 1e-9);
  }
  auto eval = values_of(rows, "eval/reward");  // greedy answers: 0 to 3 tokens, so -2 to 0
  ASSERT_FALSE(eval.empty());
  for (double r : eval) EXPECT_LE(r, 1e-9);
}

// reference_dtype / reward_dtype: the frozen models run in bf16 next to the fp32 actor. On the first rollout the
// actor equals the reference's weights, so the KL is 0 (to fp32 rounding) with an fp32 reference and only the bf16 rounding
// of the reference's log-probs makes it nonzero; the plan counts those models at 2 bytes a parameter.
TEST(Ppo, FrozenModelsRunInBf16WhenAsked) {
  const fs::path root = fresh_dir("ppo-frozen-bf16");
  auto file = write_pipeline(root, "max_steps = 1\nreference_dtype = \"bf16\"\nreward_dtype = \"bf16\"\n");
  auto pipeline = load_pipeline(file, {}, registry());
  ASSERT_TRUE(run_pipeline(pipeline, registry()));
  auto kl = values_of(read_metrics(root / "run" / "rlhf"), "kl/mean");
  ASSERT_EQ(kl.size(), 1u);
  EXPECT_TRUE(std::isfinite(kl[0]));
  EXPECT_GT(std::abs(kl[0]), 1e-5);

  const fs::path fp32_root = fresh_dir("ppo-frozen-fp32");
  auto fp32_pipeline = load_pipeline(write_pipeline(fp32_root, "max_steps = 1\n"), {}, registry());
  ASSERT_TRUE(run_pipeline(fp32_pipeline, registry()));
  auto fp32_kl = values_of(read_metrics(fp32_root / "run" / "rlhf"), "kl/mean");
  ASSERT_EQ(fp32_kl.size(), 1u);
  EXPECT_LT(std::abs(fp32_kl[0]), 1e-6);

  auto plan = dschat::testing::run_dschat("plan " + file.string());
  EXPECT_NE(plan.output.find("reference weights (bf16, frozen)"), std::string::npos) << plan.output;
  EXPECT_NE(plan.output.find("reward weights (bf16, frozen)"), std::string::npos) << plan.output;
}

// A run interrupted after step 4 and resumed from its checkpoint ends where an uninterrupted run ends: the same
// actor and EMA weights, bit for bit (constant lr, so the schedule does not depend on the planned length).
TEST(Ppo, ResumesFromItsCheckpointExactly) {
  const fs::path straight = fresh_dir("ppo-straight"), resumed = fresh_dir("ppo-resumed");
  ASSERT_TRUE(run_pipeline(load_pipeline(write_pipeline(straight, "max_steps = 6\n"), {}, registry()), registry()));

  const fs::path file = write_pipeline(resumed, "max_steps = 4\ncheckpoint_interval = 2\n");
  ASSERT_TRUE(run_pipeline(load_pipeline(file, {}, registry()), registry()));
  const fs::path stage = resumed / "run" / "rlhf";
  ASSERT_TRUE(fs::exists(stage / "checkpoints" / "step-4" / "ppo.json"));
  ASSERT_TRUE(fs::exists(stage / "checkpoints" / "step-4" / "hook-0" / "ema_state.safetensors"));
  fs::remove_all(stage / "final");  // as if the run had stopped after the checkpoint
  fs::remove_all(stage / "ema");
  ::testing::internal::CaptureStdout();
  const bool ok = run_pipeline(load_pipeline(file, {"stage.rlhf.max_steps=6"}, registry()), registry());
  const std::string out = ::testing::internal::GetCapturedStdout();
  ASSERT_TRUE(ok) << out;
  EXPECT_NE(out.find("resuming from"), std::string::npos) << out;

  for (const char* folder : {"final", "ema"}) {
    auto a = safetensors::CheckpointReader::open(straight / "run" / "rlhf" / folder);
    auto b = safetensors::CheckpointReader::open(stage / folder);
    ASSERT_EQ(a.names(), b.names()) << folder;
    for (const auto& name : a.names()) EXPECT_TRUE(a.load(name).equal(b.load(name))) << folder << " " << name;
  }
}

// The first micro-batch after a rollout trains through its experience forwards (reuse_experience_forwards, the
// default) instead of running them again as DeepSpeed-Chat does: the same losses either way. Two micro-batches
// of 8 per rollout of 16: the first reuses, the second (after an actor step) runs its own forwards.
TEST(Ppo, ReusedExperienceForwardsGiveTheSameLosses) {
  std::vector<double> losses[2][2];  // [reuse][actor, critic]
  for (const bool reuse : {true, false}) {
    const fs::path root = fresh_dir(reuse ? "ppo-reuse" : "ppo-no-reuse");
    auto file = write_pipeline(root, std::string("max_steps = 2\nreuse_experience_forwards = ") +
                                         (reuse ? "true" : "false") + "\n");
    ASSERT_TRUE(run_pipeline(load_pipeline(file, {"stage.rlhf.per_device_training_batch_size=8"}, registry()),
                             registry()));
    auto rows = read_metrics(root / "run" / "rlhf");
    losses[reuse][0] = values_of(rows, "actor/loss");
    losses[reuse][1] = values_of(rows, "critic/loss");
  }
  for (int which = 0; which < 2; ++which) {
    ASSERT_EQ(losses[1][which].size(), 1u);  // one rollout, two steps
    ASSERT_EQ(losses[0][which].size(), 1u);
    EXPECT_NEAR(losses[1][which][0], losses[0][which][0], 1e-5 * (1.0 + std::abs(losses[0][which][0])))
        << (which == 0 ? "actor" : "critic");
    EXPECT_NE(losses[1][which][0], 0.0);
  }
}

// DeepSpeed-Chat's step-3 LoRA: adapters on the actor and the critic, only_optimize_lora. The generation view
// fuses the actor's (trained, so non-zero) adapters for each rollout and must still agree with the training
// path; the exported actor differs from its initial weights in the adapted projections only.
TEST(Ppo, LoraAdaptersAloneTrainAndRollOutConsistently) {
  const fs::path lora = fresh_dir("ppo-lora"), frozen = fresh_dir("ppo-lr0");
  auto file = write_pipeline(lora,
                             "max_steps = 3\nactor_lora_dim = 4\ncritic_lora_dim = 4\nonly_optimize_lora = true\n"
                             "actor_lora_learning_rate = 1e-2\ncritic_lora_learning_rate = 1e-2\n");
  ::testing::internal::CaptureStdout();
  const bool ok = run_pipeline(load_pipeline(file, {}, registry()), registry());
  const std::string out = ::testing::internal::GetCapturedStdout();
  ASSERT_TRUE(ok) << out;
  EXPECT_NE(out.find("actor LoRA rank 4 on 12 linears, only the adapters trained"), std::string::npos) << out;
  EXPECT_NE(out.find("critic LoRA rank 4 on 12 linears"), std::string::npos) << out;
  auto rows = read_metrics(lora / "run" / "rlhf");
  auto diffs = values_of(rows, "consistency/max_abs_diff");
  ASSERT_EQ(diffs.size(), 3u);
  for (double d : diffs) EXPECT_LT(d, 1e-3);

  // The same pipeline with nothing trained (lr 0) exports the initial weights.
  const std::vector<std::string> lr0 = {"stage.rlhf.actor_learning_rate=0", "stage.rlhf.critic_learning_rate=0"};
  ASSERT_TRUE(run_pipeline(load_pipeline(write_pipeline(frozen, "max_steps = 3\n"), lr0, registry()), registry()));
  auto trained = safetensors::CheckpointReader::open(lora / "run" / "rlhf" / "final");
  auto initial = safetensors::CheckpointReader::open(frozen / "run" / "rlhf" / "final");
  ASSERT_EQ(trained.names(), initial.names());
  int adapted = 0;
  for (const auto& name : trained.names()) {
    auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
    const bool projection = has("_proj.weight") || has("fc1.weight") || has("fc2.weight");
    const bool same = trained.load(name).equal(initial.load(name));
    if (projection) {
      EXPECT_FALSE(same) << name << ": the merged adapter should have moved it";
      ++adapted;
    } else {
      EXPECT_TRUE(same) << name << ": frozen by only_optimize_lora";
    }
  }
  EXPECT_EQ(adapted, 12);
}

TEST(Ppo, CorruptedGenerationLogprobsStopTheRun) {
  const fs::path root = fresh_dir("ppo-corrupt");
  auto file = write_pipeline(root, "max_steps = 3\ndebug_corrupt_generation_logprobs = 0.25\n");
  auto pipeline = load_pipeline(file, {}, registry());
  ::testing::internal::CaptureStderr();
  const bool ok = run_pipeline(pipeline, registry());
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_FALSE(ok);
  EXPECT_NE(err.find("rollout 0: the generation path's log-probs differ from the training path's by 0.25"),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("consistency_threshold 0.001"), std::string::npos) << err;
  auto diffs = values_of(read_metrics(root / "run" / "rlhf"), "consistency/max_abs_diff");
  ASSERT_EQ(diffs.size(), 1u);  // logged before the run stops
  EXPECT_NEAR(diffs[0], 0.25, 1e-3);
  EXPECT_FALSE(fs::exists(root / "run" / "rlhf" / "final"));
}

TEST(Ppo, PtxMixesACausalLmLossOnPretrainingText) {
  const fs::path root = fresh_dir("ppo-ptx");
  {
    std::ofstream ptx(root / "ptx.jsonl");
    for (int i = 0; i < 40; ++i) ptx << "{\"text\": \"The opposite of hot is cold. Red is a color. " << i << "\"}\n";
  }
  auto file = write_pipeline(root, "max_steps = 2\nenable_ptx = true\nunsup_coef = 1.0\n",
                             "pretraining = [\"" + (root / "ptx.jsonl").string() + "\"]\n");
  auto pipeline = load_pipeline(file, {}, registry());
  ASSERT_TRUE(run_pipeline(pipeline, registry()));
  auto rows = read_metrics(root / "run" / "rlhf");
  auto ptx = values_of(rows, "ptx/loss");
  ASSERT_FALSE(ptx.empty());
  EXPECT_GT(ptx.front(), 1.0);  // a random model's causal-LM loss on 640 tokens: about ln(640) = 6.5
  EXPECT_LT(ptx.front(), 10.0);
  // PTX's backward joins the PPO one in the same optimizer step (DeepSpeed-Chat doubles the accumulation).
  EXPECT_EQ(values_of(rows, "consistency/max_abs_diff").size(), 2u);
}

// Found when the pipeline is read (validate), not when the stage starts.
TEST(Ppo, PtxWithoutPretrainingTextIsAnError) {
  const fs::path root = fresh_dir("ppo-ptx-missing");
  try {
    load_pipeline(write_pipeline(root, "enable_ptx = true\n"), {}, registry());
    FAIL() << "enable_ptx without [data] pretraining was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("enable_ptx: PTX mixes pretraining texts into the actor's steps"),
              std::string::npos) << e.what();
  }
}

// fp16: the critic (fp16, its loss scale starting at 2^32) overflows on its first micro-batches while the fp32
// actor's gradients are fine; each overflow must skip the actor's step too. One micro-batch per rollout, so
// with max_steps = 2 the run takes exactly two rollouts more than it skipped.
TEST(Ppo, AnOverflowInTheFp16CriticSkipsTheActorsStepToo) {
  const fs::path root = fresh_dir("ppo-fp16-overflow");
  auto file = write_pipeline(root, "max_steps = 2\ninitial_loss_scale = 4294967296.0\n");
  ASSERT_TRUE(run_pipeline(load_pipeline(file, {"models.rm.dtype=\"fp16\""}, registry()), registry()));
  auto rows = read_metrics(root / "run" / "rlhf");
  double skipped = 0;
  for (double v : values_of(rows, "train/overflow_skipped_steps")) skipped += v;
  const auto rollouts = values_of(rows, "reward/mean").size();
  EXPECT_GT(skipped, 0.0);
  EXPECT_EQ(static_cast<double>(rollouts), skipped + 2.0) << "rollouts " << rollouts << ", skipped " << skipped;
}
