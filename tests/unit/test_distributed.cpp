// Multi-process runs on two Gloo ranks over loopback, started by torchrun (--no-python) or by hand with the
// launcher variables: the strategies give the single-process losses, a PPO iteration runs under ZeRO-3 with the
// hybrid engine, the 2-rank quickstart runs, sharded checkpoints load into another world size, a killed rank
// stops its peer within the timeout without touching the last checkpoint, and ranks started inconsistently stop
// at once. The Communicator's sub-groups (a 2 x 2 mesh) and send/recv run on 4 and 2 Gloo processes of this
// binary, started by hand with the launcher variables.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <ATen/ATen.h>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using dschat::testing::run_command;
using dschat::testing::run_dschat;

namespace {

fs::path out_root() { return fs::path(DSCHAT_BINARY_DIR) / "test-output" / "distributed"; }
std::string torchrun() { return (fs::path(DSCHAT_TEST_PYTHON).parent_path() / "torchrun").string(); }

// SFT then RM on the quickstart model and data, 20 optimizer steps each, a global batch of 8.
fs::path write_pipeline(const std::string& name, const std::string& strategy, int per_device_batch, int accumulation,
                        const std::string& extra = "") {
  fs::create_directories(out_root());
  const fs::path file = out_root() / (name + ".toml");
  std::ofstream(file) << fmt::format(R"(
[pipeline]
name = "{0}"
output_dir = "{1}"
seed = 7

[distributed]
timeout_s = 30

[strategy]
{2}

[models.actor]
path = "{3}/configs/quickstart/model"
init = "random"

[models.critic]
path = "{3}/configs/quickstart/model"
init = "random"

[data]
datasets = ["{3}/configs/quickstart/data/requests.jsonl"]
split = [2, 4, 4]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
epochs = 10
max_steps = 20
per_device_train_batch_size = {4}
gradient_accumulation_steps = {5}
learning_rate = 1e-3
num_warmup_steps = 2
{6}

[[stage]]
name = "rm"
algorithm = "reward"
model = "critic"
epochs = 10
max_steps = 20
per_device_train_batch_size = {4}
gradient_accumulation_steps = {5}
learning_rate = 5e-4
weight_decay = 0.1
)",
                                     name, (out_root() / name).string(), strategy, DSCHAT_SOURCE_DIR, per_device_batch,
                                     accumulation, extra);
  fs::remove_all(out_root() / name);
  return file;
}

std::vector<double> metric(const fs::path& stage_dir, const std::string& tag) {
  std::vector<double> values;
  std::ifstream in(stage_dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto row = nlohmann::json::parse(line);
    if (row["tag"] == tag) values.push_back(row["value"].get<double>());
  }
  return values;
}

dschat::testing::CommandResult run_two_ranks(const fs::path& pipeline, const std::string& args = "") {
  return run_command(fmt::format("{} --standalone --nproc-per-node 2 --no-python {} run {} {}", torchrun(),
                                 DSCHAT_EXE, pipeline.string(), args));
}

// The single-process reference: the same global batch as one process with twice the accumulation.
const std::map<std::string, std::vector<double>>& reference_losses() {
  static std::map<std::string, std::vector<double>> losses = [] {
    auto file = write_pipeline("single", "plugin = \"single\"", 4, 2);
    auto result = run_dschat("run " + file.string());
    EXPECT_EQ(result.exit_code, 0) << result.output;
    std::map<std::string, std::vector<double>> out;
    for (const char* stage : {"sft", "rm"}) out[stage] = metric(out_root() / "single" / stage, "train/loss");
    return out;
  }();
  return losses;
}

// Losses of 2 ranks with per-device batch 4 against one process with batch 4 x accumulation 2. The gradients are
// the same sums in another order, so the losses agree to float rounding growing over 20 AdamW steps: below 2e-4
// on AMD Zen 3/4; on an Intel Xeon (AVX-512, AMX) 2.8e-5 for SFT and 3.6e-4 for the reward model, whose loss
// near 0.4 Adam's normalised steps make more sensitive.
constexpr double kLossTolerance = 1e-3;

// `ranks` processes with per-device batch `per_device` and accumulation `accumulation`: the caller picks them so
// that each optimizer step sees the reference's global batch of 8.
void expect_same_losses_as_single_process(const std::string& name, const std::string& strategy, int ranks = 2,
                                          int per_device = 4, int accumulation = 1) {
  const auto& reference = reference_losses();
  auto file = write_pipeline(name, strategy, per_device, accumulation);
  auto result = ranks == 2 ? run_two_ranks(file)
                           : run_command(fmt::format("OMP_NUM_THREADS=1 {} --standalone --nproc-per-node {} "
                                                     "--no-python {} run {}",
                                                     torchrun(), ranks, DSCHAT_EXE, file.string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const char* stage : {"sft", "rm"}) {
    auto losses = metric(out_root() / name / stage, "train/loss");
    ASSERT_EQ(losses.size(), 20u) << stage;
    ASSERT_EQ(reference.at(stage).size(), 20u) << stage;
    double worst = 0.0;
    for (size_t i = 0; i < losses.size(); ++i) worst = std::max(worst, std::abs(losses[i] - reference.at(stage)[i]));
    EXPECT_LT(worst, kLossTolerance) << name << " " << stage << ": max |loss - single-process loss| over 20 steps";
    std::cout << fmt::format("[{} {}] max |loss diff| over 20 steps: {:.3g} (first loss {:.4f}, last {:.4f})\n", name,
                             stage, worst, losses.front(), losses.back());
  }
  // Every rank reported what it holds; rank 0 recorded both ranks.
  EXPECT_EQ(metric(out_root() / name / "sft", "memory/rank1/optimizer_bytes").size(), 1u);
}

}  // namespace

TEST(LaunchEnvironment, ReadsTorchrunSlurmAndOpenMpiVariables) {
  auto from = [](std::map<std::string, std::string> vars) {
    return dschat::detect_launch_environment([vars](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    });
  };
  auto none = from({});
  EXPECT_EQ(none.world_size, 1);
  EXPECT_EQ(none.launcher, "none");

  auto t = from({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.5"},
                 {"MASTER_PORT", "29400"}, {"TORCHELASTIC_RUN_ID", "x"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                 {"TORCHELASTIC_RESTART_COUNT", "2"}});
  EXPECT_EQ(t.launcher, "torchrun");
  EXPECT_EQ(t.rank, 1);
  EXPECT_EQ(t.world_size, 4);
  EXPECT_EQ(t.master_addr, "10.0.0.5");
  EXPECT_EQ(t.master_port, 29400);
  EXPECT_TRUE(t.agent_store);
  EXPECT_EQ(t.store_prefix, "/dschat/attempt_2");

  auto s = from({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                 {"SLURM_STEP_NODELIST", "gpu[07-08,11]"}, {"SLURM_JOB_ID", "123456"}});
  EXPECT_EQ(s.launcher, "slurm");
  EXPECT_EQ(s.rank, 3);
  EXPECT_EQ(s.world_size, 8);
  EXPECT_EQ(s.local_rank, 1);
  EXPECT_EQ(s.master_addr, "gpu07");
  EXPECT_EQ(s.master_port, 20000 + 123456 % 10000);

  auto m = from({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  EXPECT_EQ(m.launcher, "mpirun");
  EXPECT_EQ(m.rank, 1);
  EXPECT_EQ(m.master_addr, "127.0.0.1");
  EXPECT_EQ(m.master_port, 29500);
  auto job = from({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                   {"OMPI_MCA_ess_base_jobid", "2111569921"}});
  EXPECT_EQ(job.master_port, 20000 + 2111569921 % 10000);

  try {
    from({{"RANK", "x"}, {"WORLD_SIZE", "2"}});
    ADD_FAILURE() << "a malformed RANK was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("RANK=\"x\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(from({{"RANK", "2"}, {"WORLD_SIZE", "2"}}), std::invalid_argument);
}

TEST(TwoRanks, DdpMatchesOneProcess) { expect_same_losses_as_single_process("ddp", "plugin = \"ddp\""); }
TEST(TwoRanks, Zero1MatchesOneProcess) {
  expect_same_losses_as_single_process("zero1", "plugin = \"zero\"\nstage = 1");
}
TEST(TwoRanks, Zero2MatchesOneProcess) {
  expect_same_losses_as_single_process("zero2", "plugin = \"zero\"\nstage = 2");
}
TEST(TwoRanks, Zero3MatchesOneProcess) {
  expect_same_losses_as_single_process("zero3", "plugin = \"zero\"\nstage = 3");
}
TEST(TwoRanks, Zero3OffloadMatchesOneProcess) {
  expect_same_losses_as_single_process(
      "zero3-offload", "plugin = \"zero\"\nstage = 3\noffload_optimizer = true\noffload_parameters = true");
}

// Tensor parallelism: both ranks hold half of every block and of the (tied) head's neighbours, read the same
// batches (one replica: batch 4 x accumulation 2, as the reference), and train the reward model's value head
// alongside. Then 2 x 2: two replicas of two TP ranks, each replica reading its own batches of 4.
TEST(TwoRanks, TensorParallelMatchesOneProcess) {
  expect_same_losses_as_single_process("tp", "plugin = \"tp\"", 2, 4, 2);
  // Each rank holds about half the weights (norms, embeddings and biases are whole on both).
  auto dir = out_root() / "tp" / "sft";
  auto params = metric(dir, "memory/rank0/parameter_bytes"), optimizer = metric(dir, "memory/rank1/optimizer_bytes");
  auto single = metric(out_root() / "single" / "sft", "memory/rank0/parameter_bytes");
  ASSERT_FALSE(params.empty() || single.empty() || optimizer.empty());
  EXPECT_LT(params.front(), single.front() * 0.75);
  EXPECT_TRUE(fs::exists(out_root() / "tp" / "rm" / "final" / "value_head.safetensors"));
}
// A TP checkpoint holds one folder per TP rank; resuming from it continues exactly where the run was (the
// steps after it repeat the uninterrupted run's losses), and another tp_size is refused, naming both.
TEST(TwoRanks, TensorParallelCheckpointResumesTheSameRun) {
  auto file = write_pipeline("tp-resume", "plugin = \"tp\"", 4, 2, "checkpoint_interval = 5");
  auto first = run_two_ranks(file, "--set stage.rm.max_steps=1");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const auto stage = out_root() / "tp-resume" / "sft";
  const auto uninterrupted = metric(stage, "train/loss");
  ASSERT_EQ(uninterrupted.size(), 20u);
  const auto checkpoint = stage / "checkpoints" / "step-15";
  ASSERT_TRUE(fs::exists(checkpoint / "engine.json"));
  EXPECT_TRUE(fs::exists(checkpoint / "tp-rank-0" / "optimizer.safetensors"));
  EXPECT_TRUE(fs::exists(checkpoint / "tp-rank-1" / "optimizer.safetensors"));

  fs::remove_all(stage / "final");
  fs::remove_all(stage / "checkpoints" / "step-20");  // resume from step 15
  auto resumed = run_two_ranks(file, "--set stage.rm.max_steps=1");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming from"), std::string::npos) << resumed.output;
  const auto losses = metric(stage, "train/loss");
  ASSERT_EQ(losses.size(), 20u);
  for (size_t i = 15; i < 20; ++i) EXPECT_NEAR(losses[i], uninterrupted[i], 1e-6) << "step " << i + 1;

  fs::remove_all(stage / "final");
  auto other = run_dschat("run " + file.string() + " --set stage.rm.max_steps=1");  // one rank: tp_size 1
  EXPECT_NE(other.exit_code, 0);
  EXPECT_NE(other.output.find("was saved by tensor parallelism over 2 ranks; this run has tp_size 1"),
            std::string::npos)
      << other.output;
}

TEST(FourRanks, TensorParallelTimesDataParallelMatchesOneProcess) {
  expect_same_losses_as_single_process("tp2x2", "plugin = \"tp\"\ntp_size = 2", 4, 4, 1);
}

// DESIGN §6: per-rank memory falls stage by stage (ZeRO's 2 ranks: optimizer / 2, then gradients / 2, then
// parameters / 2), as recorded by each run above.
TEST(TwoRanks, MemoryFallsStageByStage) {
  struct Figures { double params, grads, optimizer; };
  auto figures = [](const std::string& name) {
    auto dir = out_root() / name / "sft";
    auto one = [&](const char* what) {
      auto v = metric(dir, fmt::format("memory/rank0/{}_bytes", what));
      return v.empty() ? -1.0 : v.front();
    };
    return Figures{one("parameter"), one("gradient"), one("optimizer")};
  };
  for (const char* name : {"ddp", "zero1", "zero2", "zero3"})
    if (!fs::exists(out_root() / name / "sft" / "metrics.jsonl")) GTEST_SKIP() << "needs the runs above";
  Figures ddp = figures("ddp"), z1 = figures("zero1"), z2 = figures("zero2"), z3 = figures("zero3");
  std::cout << fmt::format("rank 0 bytes (params / grads / optimizer): ddp {} / {} / {}, zero1 {} / {} / {}, "
                           "zero2 {} / {} / {}, zero3 {} / {} / {}\n",
                           ddp.params, ddp.grads, ddp.optimizer, z1.params, z1.grads, z1.optimizer, z2.params,
                           z2.grads, z2.optimizer, z3.params, z3.grads, z3.optimizer);
  EXPECT_NEAR(z1.optimizer, ddp.optimizer / 2, ddp.optimizer * 0.01);
  EXPECT_EQ(z1.grads, ddp.grads);
  EXPECT_NEAR(z2.grads, ddp.grads / 2, ddp.grads * 0.01);
  EXPECT_EQ(z2.params, ddp.params);
  EXPECT_NEAR(z3.params, ddp.params / 2, ddp.params * 0.01);
}

// The SFT + RM pipeline above plus a two-step PPO stage (`extra`: more of its keys).
static fs::path write_ppo_pipeline(const std::string& name, const std::string& strategy, const std::string& extra) {
  auto file = write_pipeline(name, strategy, 8, 1);
  std::ofstream(file, std::ios::app) << R"(
[[stage]]
name = "rlhf"
algorithm = "ppo"
actor = "sft"
critic = "rm"
max_steps = 2
per_device_generation_batch_size = 8
per_device_training_batch_size = 8
eval_prompts = 8
generation = { plugin = "kv-cache", max_new_tokens = 16, do_sample = true }
)" << extra << "\n";
  return file;
}

// Under ZeRO-3 the reference and reward models' blocks are sharded as well and gathered block by block.
TEST(TwoRanks, PpoIterationUnderZero3WithTheHybridEngine) {
  auto file = write_ppo_pipeline("ppo-zero3", "plugin = \"zero\"\nstage = 3",
                                 "hooks = [{ plugin = \"ema\", beta = 0.992 }]");
  auto result = run_two_ranks(file);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  // The frozen models are partitioned too (DeepSpeed-Chat's reference and reward under ZeRO-3).
  EXPECT_NE(result.output.find("reference: blocks sharded over 2 ranks"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("reward model: blocks sharded over 2 ranks"), std::string::npos) << result.output;
  const auto stage = out_root() / "ppo-zero3" / "rlhf";
  EXPECT_TRUE(fs::exists(stage / "final" / "COMPLETE"));
  EXPECT_TRUE(fs::exists(stage / "ema" / "config.json"));
  auto diffs = metric(stage, "consistency/max_abs_diff");
  ASSERT_FALSE(diffs.empty());
  for (double d : diffs) EXPECT_LT(d, 1e-3) << "generation (gathered weights) vs training path (ZeRO-3 forward)";
  EXPECT_FALSE(metric(stage, "actor/loss").empty());
}

// The hybrid engine's TP rollouts: both ranks decode both ranks' prompts on their Megatron shards of the actor;
// the consistency check compares each rank's rows with its (whole-model) training path.
TEST(TwoRanks, PpoRolloutsWithTensorParallelGeneration) {
  auto file = write_ppo_pipeline("ppo-tp", "plugin = \"zero\"\nstage = 2", "generation_tensor_parallel = true");
  auto result = run_two_ranks(file);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto diffs = metric(out_root() / "ppo-tp" / "rlhf", "consistency/max_abs_diff");
  ASSERT_EQ(diffs.size(), 2u);
  for (double d : diffs) EXPECT_LT(d, 1e-4) << "TP=2 generation vs the whole actor's training path";
}

// PPO (with the EMA) trained under tensor parallelism: one replica of two ranks generates, scores and trains on
// exactly what one process does with the same batches (the same rollout seed, the gathered actor), so its
// metrics are the single process's to float rounding.
TEST(TwoRanks, PpoUnderTensorParallelTrainingMatchesOneProcess) {
  const std::string ema = "hooks = [{ plugin = \"ema\", beta = 0.992 }]";
  auto single = write_ppo_pipeline("ppo-single", "plugin = \"single\"", ema);
  auto reference = run_dschat("run " + single.string());
  ASSERT_EQ(reference.exit_code, 0) << reference.output;
  auto file = write_ppo_pipeline("ppo-tp-train", "plugin = \"tp\"", ema);
  auto result = run_two_ranks(file);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto stage = out_root() / "ppo-tp-train" / "rlhf";
  EXPECT_TRUE(fs::exists(stage / "final" / "COMPLETE"));
  EXPECT_TRUE(fs::exists(stage / "ema" / "config.json"));
  for (double d : metric(stage, "consistency/max_abs_diff")) EXPECT_LT(d, 1e-3);
  for (const char* tag : {"reward/mean", "kl/mean", "actor/loss", "critic/loss", "eval/reward", "eval/ema_reward"}) {
    auto mine = metric(stage, tag), theirs = metric(out_root() / "ppo-single" / "rlhf", tag);
    ASSERT_EQ(mine.size(), theirs.size()) << tag;
    ASSERT_FALSE(mine.empty()) << tag;
    for (size_t i = 0; i < mine.size(); ++i)
      EXPECT_NEAR(mine[i], theirs[i], 1e-3 * std::max(1.0, std::abs(theirs[i]))) << tag << " #" << i;
  }
}

// TP x DP rollouts (DeepSpeed-Chat's inference_tp_size): 4 ranks as 2 TP groups of 2 ({0,1}, {2,3}); each group
// decodes its own members' prompts on its shards. Each rank's rows agree with its whole-model training path.
TEST(FourRanks, PpoRolloutsInTensorParallelGroupsOfTwo) {
  auto file = write_ppo_pipeline("ppo-tp2x2", "plugin = \"zero\"\nstage = 2", "inference_tp_size = 2");
  auto result = run_command(fmt::format("OMP_NUM_THREADS=1 {} --standalone --nproc-per-node 4 --no-python {} run {}",
                                        torchrun(), DSCHAT_EXE, file.string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto diffs = metric(out_root() / "ppo-tp2x2" / "rlhf", "consistency/max_abs_diff");
  ASSERT_EQ(diffs.size(), 2u);
  for (double d : diffs) EXPECT_LT(d, 1e-4) << "TP=2 (of 4 ranks) generation vs the whole actor's training path";
  // A size that does not divide the ranks is refused at validate, naming the key.
  auto refused = run_command(fmt::format("{} --standalone --nproc-per-node 4 --no-python {} validate {} "
                                         "--set stage.rlhf.inference_tp_size=3",
                                         torchrun(), DSCHAT_EXE, file.string()));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("inference_tp_size: must divide the number of ranks (4)"), std::string::npos)
      << refused.output;
}

TEST(TwoRanks, QuickstartRunsAsTheReadmeSays) {
  const auto out = out_root() / "quickstart-2rank";
  fs::remove_all(out);
  auto result = run_command(fmt::format("cd {}/configs && {} --standalone --nproc-per-node 2 --no-python {} run "
                                        "quickstart-2rank.toml --set 'pipeline.output_dir=\"{}\"'",
                                        DSCHAT_SOURCE_DIR, torchrun(), DSCHAT_EXE, out.string()));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const char* stage : {"sft", "rm", "rlhf"}) EXPECT_TRUE(fs::exists(out / stage / "final" / "COMPLETE")) << stage;
  auto reward = metric(out / "rlhf", "eval/reward");
  ASSERT_GE(reward.size(), 2u);
  std::cout << fmt::format("2-rank quickstart: held-out reward {:.3f} -> {:.3f}\n", reward.front(), reward.back());
  EXPECT_GT(reward.back(), reward.front());
}

// A ZeRO-2 checkpoint written by 2 ranks resumes in one process under ZeRO-3 (slices re-cut for the new world).
TEST(TwoRanks, ShardedCheckpointLoadsIntoAnotherWorldSizeAndStage) {
  auto file = write_pipeline("reshard", "plugin = \"zero\"\nstage = 2", 4, 1, "checkpoint_interval = 5");
  auto two = run_two_ranks(file, "--set stage.sft.max_steps=10");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  const auto checkpoint = out_root() / "reshard" / "sft" / "checkpoints" / "step-10";
  ASSERT_TRUE(fs::exists(checkpoint / "engine.json"));
  EXPECT_TRUE(fs::exists(checkpoint / "shard-0-of-2.safetensors"));
  EXPECT_TRUE(fs::exists(checkpoint / "shard-1-of-2.safetensors"));
  EXPECT_TRUE(fs::exists(checkpoint / "manifest.json"));

  // Consolidated into an HF folder: step 10 is the run's last step, so it must equal the final export exactly.
  const auto consolidated = out_root() / "reshard-consolidated";
  fs::remove_all(consolidated);
  auto merged = run_dschat(fmt::format("consolidate {} --like {}/configs/quickstart/model --out {}",
                                       checkpoint.string(), DSCHAT_SOURCE_DIR, consolidated.string()));
  ASSERT_EQ(merged.exit_code, 0) << merged.output;
  auto mine = dschat::safetensors::CheckpointReader::open(consolidated);
  auto final_export = dschat::safetensors::CheckpointReader::open(out_root() / "reshard" / "sft" / "final");
  ASSERT_EQ(mine.names(), final_export.names());
  for (const auto& name : mine.names()) EXPECT_TRUE(mine.load(name).equal(final_export.load(name))) << name;
  auto broken = run_dschat(fmt::format("consolidate {} --like {}/configs/quickstart/model --out {}",
                                       (out_root() / "reshard").string(), DSCHAT_SOURCE_DIR, consolidated.string()));
  EXPECT_NE(broken.exit_code, 0);
  EXPECT_NE(broken.output.find("manifest.json"), std::string::npos) << broken.output;

  fs::remove_all(out_root() / "reshard" / "sft" / "final");  // run the stage again: it resumes from step 10
  auto one = run_dschat("run " + file.string() +
                        " --set strategy.stage=3 --set stage.sft.max_steps=14");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("resuming from"), std::string::npos) << one.output;
  auto losses = metric(out_root() / "reshard" / "sft", "train/loss");
  ASSERT_GE(losses.size(), 14u);
  EXPECT_LT(losses.back(), losses.front());
}

// Starts 2 ranks by hand (as mpirun or srun would: only the variables), waits for the checkpoint at step 4, does
// `signal_rank1` to rank 1 and times how long rank 0 takes to exit.
struct Interrupted {
  std::string output;     // the script's: "rank0_exit=<code> seconds=<s>"
  std::string rank0;      // rank 0's log
  double seconds = -1.0;  // from rank 1's signal to rank 0's exit
};
static Interrupted interrupt_rank1(const std::string& name, const std::string& signal_rank1, double timeout_s) {
  auto file = write_pipeline(name, "plugin = \"zero\"\nstage = 2", 4, 1, "checkpoint_interval = 4");
  const int port = 20000 + static_cast<int>((::getpid() * 7 + name.size()) % 20000);
  const auto dir = out_root() / name;
  const auto script = fmt::format(R"(
export WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT={port}
args="run {file} --set stage.sft.max_steps=100000 --set stage.sft.epochs=1000 --set distributed.timeout_s={timeout}"
RANK=0 LOCAL_RANK=0 {exe} $args > {dir}/rank0.log 2>&1 &
p0=$!
RANK=1 LOCAL_RANK=1 {exe} $args > {dir}/rank1.log 2>&1 &
p1=$!
for i in $(seq 1 1200); do [ -f {dir}/sft/checkpoints/step-4/engine.json ] && break; sleep 0.1; done
kill -{signal} $p1
start=$(date +%s%N)
wait $p0
rc=$?
end=$(date +%s%N)
kill -9 $p1 2>/dev/null
echo "rank0_exit=$rc seconds=$(( (end - start) / 1000000 ))e-3"
)",
                                  fmt::arg("port", port), fmt::arg("exe", DSCHAT_EXE), fmt::arg("file", file.string()),
                                  fmt::arg("dir", dir.string()), fmt::arg("signal", signal_rank1),
                                  fmt::arg("timeout", timeout_s));
  fs::create_directories(dir);
  std::ofstream(dir / "interrupt.sh") << script;
  Interrupted result;
  result.output = run_command("bash " + (dir / "interrupt.sh").string()).output;
  std::ifstream log0(dir / "rank0.log");
  result.rank0.assign(std::istreambuf_iterator<char>(log0), std::istreambuf_iterator<char>());
  if (auto at = result.output.find("seconds="); at != std::string::npos)
    result.seconds = std::stod(result.output.substr(at + 8));
  return result;
}

// A rank that stops answering (SIGSTOP: alive, connections open) is noticed by the collective timeout.
TEST(TwoRanks, AStoppedRankStopsThePeerAtTheTimeout) {
  const auto [output, rank0, seconds] = interrupt_rank1("stopped", "STOP", 8.0);
  ASSERT_NE(output.find("rank0_exit="), std::string::npos) << output;
  EXPECT_EQ(output.find("rank0_exit=0 "), std::string::npos) << output << rank0;
  EXPECT_LT(seconds, 8.0 + 10.0) << rank0;
  EXPECT_NE(rank0.find("rank 0/2"), std::string::npos) << rank0;
  std::cout << fmt::format("rank 0 exited {:.2f} s after rank 1 was stopped (timeout 8 s)\n", seconds);
}

// Rank 1 is killed after the checkpoint at step 4: rank 0 must exit non-zero with a message within the timeout
// (30 s here), and the checkpoint stays complete and loadable.
TEST(TwoRanks, AKilledRankStopsThePeerWithinTheTimeout) {
  const auto [output, rank0, seconds] = interrupt_rank1("kill", "9", 30.0);
  const auto dir = out_root() / "kill";
  ASSERT_NE(output.find("rank0_exit="), std::string::npos) << output;
  EXPECT_EQ(output.find("rank0_exit=0 "), std::string::npos) << output << rank0;
  EXPECT_LT(seconds, 30.0 + 10.0) << rank0;
  EXPECT_NE(rank0.find("rank 0/2"), std::string::npos) << rank0;
  EXPECT_NE(rank0.find("died"), std::string::npos) << rank0;
  std::cout << fmt::format("rank 0 exited {:.2f} s after rank 1 was killed; its last words: {}\n", seconds,
                           rank0.substr(rank0.rfind("error:") == std::string::npos ? 0 : rank0.rfind("error:")));
  // The last complete checkpoint is intact: its files parse and hold the slices.
  std::optional<fs::path> latest;
  for (const auto& e : fs::directory_iterator(dir / "sft" / "checkpoints")) {
    auto name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0 && name.find('.') == std::string::npos && fs::exists(e.path() / "engine.json"))
      latest = e.path();
  }
  ASSERT_TRUE(latest) << "no complete checkpoint";
  nlohmann::json manifest = nlohmann::json::parse(std::ifstream(*latest / "manifest.json"));
  EXPECT_EQ(manifest["partitions"], 2);
  for (int r = 0; r < 2; ++r) {
    auto shard = dschat::safetensors::File::open(*latest / fmt::format("shard-{}-of-2.safetensors", r));
    EXPECT_TRUE(shard->contains("block.0.master"));
  }
}

// Two ranks under the one-process strategy would each train alone on half the data: refused, saying what to use.
TEST(TwoRanks, TheSingleStrategyRefusesSeveralRanks) {
  auto file = write_pipeline("single-2rank", "plugin = \"single\"", 4, 1);
  auto result = run_two_ranks(file);
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("use [strategy] plugin = \"ddp\" or \"zero\""), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(out_root() / "single-2rank" / "sft" / "final" / "COMPLETE"));
}

// Two ranks started by hand with variables that disagree (`rank1`: RANK and WORLD_SIZE of the second process;
// the first is rank 0 of `size0`): both must stop at the rendezvous at once, naming what each said, not wait out
// the 60 s timeout for a rank that never comes.
struct Disagreement {
  std::string output, rank0, rank1;
};
static Disagreement start_inconsistent_ranks(const std::string& name, int size0, const std::string& rank1) {
  auto file = write_pipeline(name, "plugin = \"zero\"\nstage = 2", 4, 1);
  // Below Linux's ephemeral ports (32768-), which outgoing connections may hold.
  const int port = 20000 + static_cast<int>((::getpid() * 7 + name.size()) % 12000);
  const auto dir = out_root() / name;
  const auto script = fmt::format(R"(
export MASTER_ADDR=127.0.0.1 MASTER_PORT={port}
args="run {file} --set distributed.timeout_s=60"
start=$(date +%s%N)
RANK=0 WORLD_SIZE={size0} {exe} $args > {dir}/rank0.log 2>&1 &
p0=$!
{rank1} {exe} $args > {dir}/rank1.log 2>&1 &
p1=$!
wait $p0; rc0=$?
wait $p1; rc1=$?
end=$(date +%s%N)
echo "rc0=$rc0 rc1=$rc1 seconds=$(( (end - start) / 1000000 ))e-3"
)",
                                  fmt::arg("port", port), fmt::arg("exe", DSCHAT_EXE), fmt::arg("file", file.string()),
                                  fmt::arg("dir", dir.string()), fmt::arg("size0", size0), fmt::arg("rank1", rank1));
  fs::create_directories(dir);
  std::ofstream(dir / "start.sh") << script;
  Disagreement result;
  result.output = run_command("bash " + (dir / "start.sh").string()).output;
  for (auto [log, text] : {std::pair{"rank0.log", &result.rank0}, std::pair{"rank1.log", &result.rank1}}) {
    std::ifstream in(dir / log);
    text->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return result;
}

static void expect_both_stop_naming(const Disagreement& d, const std::string& first, const std::string& second) {
  ASSERT_NE(d.output.find("rc0="), std::string::npos) << d.output;
  EXPECT_EQ(d.output.find("rc0=0 "), std::string::npos) << d.output << d.rank0;
  EXPECT_EQ(d.output.find("rc1=0 "), std::string::npos) << d.output << d.rank1;
  const double seconds = std::stod(d.output.substr(d.output.find("seconds=") + 8));
  EXPECT_LT(seconds, 20.0) << "the ranks waited for the timeout (60 s)\n" << d.rank0 << d.rank1;
  for (const std::string* log : {&d.rank0, &d.rank1}) {
    EXPECT_NE(log->find("the launcher started inconsistent ranks"), std::string::npos) << *log;
    EXPECT_NE(log->find(first), std::string::npos) << *log;
    EXPECT_NE(log->find(second), std::string::npos) << *log;
  }
  std::cout << fmt::format("both ranks stopped after {:.2f} s: {}", seconds,
                           d.rank0.substr(d.rank0.rfind("error:") == std::string::npos ? 0 : d.rank0.rfind("error:")));
}

TEST(TwoRanks, RanksThatDisagreeOnTheWorldSizeStopAtOnce) {
  auto d = start_inconsistent_ranks("size-mismatch", 3, "RANK=1 WORLD_SIZE=2");
  expect_both_stop_naming(d, "env rank 0 of 3", "env rank 1 of 2");
}

TEST(TwoRanks, TwoRanksThatClaimRankZeroStopAtOnce) {
  auto d = start_inconsistent_ranks("rank-twice", 2, "RANK=0 WORLD_SIZE=2");
  ASSERT_NE(d.rank0.find("env rank 0 of 2"), std::string::npos) << d.rank0;
  expect_both_stop_naming(d, "env rank 0 of 2 (pid", "and env rank 0 of 2 (pid");
}

// ---- Communicator sub-groups and point-to-point ------------------------------------------------------------------

namespace {

constexpr const char* kScenarioEnv = "DSCHAT_COMM_SCENARIO";
constexpr const char* kScenarioDirEnv = "DSCHAT_COMM_DIR";

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t length = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    if (fd >= 0) ::close(fd);
    return 29578;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// The message of what `f` throws as `E`, or a line saying it did not.
template <typename E, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

at::Tensor floats(std::vector<float> values) { return at::tensor(values, at::kFloat); }
std::vector<float> values_of(const at::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

struct Ranks {
  std::vector<int> rc;
  std::vector<std::string> log;
  double seconds = -1.0;  // from the start to rank 0's exit
};

// Starts `n` ranks of this binary on `scenario` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as srun or mpirun
// would set them) and waits for them. `kill_after_rank0`: the others are killed once rank 0 exits (one of them
// stopped itself).
Ranks start_ranks(const std::string& scenario, int n, bool kill_after_rank0 = false) {
  const fs::path dir = out_root() / ("comm-" + scenario);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path exe = fs::read_symlink("/proc/self/exe");
  std::ostringstream script;
  script << "export WORLD_SIZE=" << n << " MASTER_ADDR=127.0.0.1 MASTER_PORT=" << free_port() << " "
         << kScenarioEnv << "=" << scenario << " " << kScenarioDirEnv << "=" << dir << " OMP_NUM_THREADS=1\n"
         << "start=$(date +%s%N)\n";
  for (int rank = 0; rank < n; ++rank)
    script << "(RANK=" << rank << " LOCAL_RANK=" << rank << " timeout -s KILL 120 " << exe
           << " --gtest_filter=CommunicatorWorker.Rank > " << dir / fmt::format("rank{}.log", rank)
           << " 2>&1; echo $? > " << dir / fmt::format("rank{}.rc", rank) << ") &\np" << rank << "=$!\n";
  script << "wait $p0\nend=$(date +%s%N)\n";
  if (kill_after_rank0)
    for (int rank = 1; rank < n; ++rank)
      script << "kill -KILL $(cat " << dir / fmt::format("rank{}.pid", rank) << ") 2>/dev/null\n";
  script << "wait\necho $(( (end - start) / 1000000 ))e-3 > " << dir / "seconds" << "\n";
  std::ofstream(dir / "run.sh") << script.str();
  run_command("bash " + (dir / "run.sh").string());
  Ranks result;
  for (int rank = 0; rank < n; ++rank) {
    const auto rc = read_text(dir / fmt::format("rank{}.rc", rank));
    result.rc.push_back(rc.empty() ? -1 : std::stoi(rc));
    result.log.push_back(read_text(dir / fmt::format("rank{}.log", rank)));
  }
  if (auto seconds = read_text(dir / "seconds"); !seconds.empty()) result.seconds = std::stod(seconds);
  return result;
}

void expect_all_passed(const Ranks& ranks) {
  for (size_t r = 0; r < ranks.rc.size(); ++r) {
    EXPECT_EQ(ranks.rc[r], 0) << "rank " << r << ":\n" << ranks.log[r];
    EXPECT_CONTAINS(ranks.log[r], "[  PASSED  ] 1 test");
  }
}

// 4 ranks as dp 2 x tp 2: TP groups {0,1},{2,3}, DP groups {0,2},{1,3}. Each rank holds world rank + 1, so every
// group's result differs from every other group's and from the world's.
void mesh_scenario(dschat::Communicator& world) {
  ASSERT_EQ(world.size(), 4);
  const int me = world.rank();
  auto mesh = dschat::make_mesh(world, /*dp=*/2, /*tp=*/2);
  ASSERT_TRUE(mesh.tp && mesh.dp);
  const std::vector<int> tp_members = me < 2 ? std::vector<int>{0, 1} : std::vector<int>{2, 3};
  const std::vector<int> dp_members = me % 2 == 0 ? std::vector<int>{0, 2} : std::vector<int>{1, 3};
  EXPECT_EQ(mesh.tp->world_ranks(), tp_members);
  EXPECT_EQ(mesh.dp->world_ranks(), dp_members);
  EXPECT_EQ(mesh.tp->size(), 2);
  EXPECT_EQ(mesh.dp->size(), 2);
  EXPECT_EQ(mesh.tp->rank(), me % 2);
  EXPECT_EQ(mesh.dp->rank(), me / 2);
  EXPECT_EQ(mesh.tp->backend(), "gloo");
  EXPECT_EQ(mesh.tp->timeout_s(), world.timeout_s());

  const float mine = static_cast<float>(me + 1);
  const float tp_sum = static_cast<float>(tp_members[0] + tp_members[1] + 2);
  const float dp_sum = static_cast<float>(dp_members[0] + dp_members[1] + 2);
  {  // all_reduce in both groups at once: each finishes with its own group's sum
    at::Tensor a = floats({mine, 10 * mine}), b = floats({mine});
    auto pending_tp = mesh.tp->all_reduce_async(a);
    auto pending_dp = mesh.dp->all_reduce_async(b);
    pending_dp.wait();
    pending_tp.wait();
    EXPECT_EQ(values_of(a), (std::vector<float>{tp_sum, 10 * tp_sum}));
    EXPECT_EQ(values_of(b), (std::vector<float>{dp_sum}));
    at::Tensor w = floats({mine});
    world.all_reduce(w);
    EXPECT_EQ(values_of(w), (std::vector<float>{10}));
  }
  {
    at::Tensor m = floats({mine});
    mesh.dp->all_reduce_max(m);
    EXPECT_EQ(values_of(m), (std::vector<float>{static_cast<float>(dp_members[1] + 1)}));
    EXPECT_EQ(mesh.tp->sum(mine), tp_sum);
    EXPECT_EQ(mesh.dp->mean(mine), dp_sum / 2);
  }
  {  // all_gather: group rank r's shard at [2r, 2r + 2)
    at::Tensor shard = floats({mine, -mine}), full = at::zeros({4}, at::kFloat);
    mesh.tp->all_gather(full, shard);
    const float a = tp_members[0] + 1, b = tp_members[1] + 1;
    EXPECT_EQ(values_of(full), (std::vector<float>{a, -a, b, -b}));
    mesh.dp->all_gather(full, shard);
    const float c = dp_members[0] + 1, d = dp_members[1] + 1;
    EXPECT_EQ(values_of(full), (std::vector<float>{c, -c, d, -d}));
  }
  {  // reduce_scatter: full = [mine, 2 mine, 3 mine, 4 mine]; group rank r gets the sum of chunk r
    at::Tensor full = floats({mine, 2 * mine, 3 * mine, 4 * mine}), shard = at::zeros({2}, at::kFloat);
    mesh.tp->reduce_scatter(shard, full);
    const int r = mesh.tp->rank();
    EXPECT_EQ(values_of(shard), (std::vector<float>{(2 * r + 1) * tp_sum, (2 * r + 2) * tp_sum}));
    mesh.dp->reduce_scatter(shard, full);
    const int q = mesh.dp->rank();
    EXPECT_EQ(values_of(shard), (std::vector<float>{(2 * q + 1) * dp_sum, (2 * q + 2) * dp_sum}));
  }
  {  // broadcast from group rank 1: the group's second member's value
    at::Tensor t = floats({mine});
    mesh.tp->broadcast(t, 1);
    EXPECT_EQ(values_of(t), (std::vector<float>{static_cast<float>(tp_members[1] + 1)}));
    t = floats({mine});
    mesh.dp->broadcast(t, 1);
    EXPECT_EQ(values_of(t), (std::vector<float>{static_cast<float>(dp_members[1] + 1)}));
  }
  mesh.tp->barrier();
  mesh.dp->barrier();

  // A group the rank is not in: nullptr on ranks 2 and 3, a working group on 0 and 1.
  auto pair = world.new_group({0, 1});
  if (me < 2) {
    ASSERT_TRUE(pair);
    EXPECT_EQ(pair->rank(), me);
    EXPECT_EQ(pair->sum(mine), 3.0);
  } else {
    EXPECT_EQ(pair, nullptr);
  }
  // A group of a group: its ranks count in the parent, its world ranks stay the world's.
  auto single = mesh.dp->new_group({1});
  if (mesh.dp->rank() == 1) {
    ASSERT_TRUE(single);
    EXPECT_EQ(single->size(), 1);
    EXPECT_EQ(single->world_ranks(), std::vector<int>{dp_members[1]});
    EXPECT_EQ(single->sum(mine), mine);
  } else {
    EXPECT_EQ(single, nullptr);
  }
  auto whole = world.new_group({0, 1, 2, 3});  // the world again, as another group
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->sum(mine), 10.0);

  // Bad lists: every rank refuses them alike, before the rendezvous, so the next group still forms.
  using E = std::invalid_argument;
  auto where = fmt::format("rank {}/4", me);
  auto bad = message_of<E>([&] { world.new_group({2, 1}); });
  EXPECT_CONTAINS(bad, where + ": new_group([2, 1]): the ranks must be sorted ascending, and 1 comes after 2");
  EXPECT_CONTAINS(message_of<E>([&] { world.new_group({0, 1, 1}); }), "new_group([0, 1, 1]): rank 1 appears twice");
  EXPECT_CONTAINS(message_of<E>([&] { world.new_group({0, 4}); }),
                  "rank 4 is out of range: this communicator has ranks 0..3 (size 4)");
  EXPECT_CONTAINS(message_of<E>([&] { world.new_group({-1, 0}); }), "rank -1 is out of range");
  EXPECT_CONTAINS(message_of<E>([&] { world.new_group({}); }), "new_group([]): a group needs at least one rank");
  EXPECT_CONTAINS(message_of<E>([&] { mesh.tp->new_group({0, 2}); }),
                  fmt::format("rank {}/2 of group {} (world rank {}): new_group([0, 2]): rank 2 is out of range: "
                              "this communicator has ranks 0..1 (size 2)",
                              me % 2, me < 2 ? "[0, 1]" : "[2, 3]", me));
  EXPECT_CONTAINS(message_of<E>([&] { dschat::make_mesh(world, 3, 2); }),
                  "make_mesh(dp 3, tp 2): dp x tp must equal the 4 ranks of the communicator");
  auto again = world.new_group({1, 3});
  EXPECT_EQ(static_cast<bool>(again), me % 2 == 1);
  if (again) EXPECT_EQ(again->sum(mine), 6.0);
  world.barrier();
}

// A ring over the 4 world ranks, then a two-stage pipeline inside each TP group (group ranks: world 2 is rank 0
// of {2, 3}), with tags telling two messages apart.
void p2p_scenario(dschat::Communicator& world) {
  ASSERT_EQ(world.size(), 4);
  const int me = world.rank(), n = world.size();
  {  // the ring: send to the next rank, receive from the previous, three times round
    at::Tensor token = at::full({1000}, static_cast<float>(me), at::kFloat);
    for (int hop = 1; hop <= 3; ++hop) {
      at::Tensor incoming = at::empty({1000}, at::kFloat);
      auto sent = world.send_async(token, (me + 1) % n);
      world.recv(incoming, (me + n - 1) % n);
      sent.wait();
      EXPECT_TRUE(at::equal(incoming, at::full({1000}, static_cast<float>((me + n - hop) % n), at::kFloat)))
          << "hop " << hop << ": " << incoming.slice(0, 0, 3);
      token = incoming;
    }
  }
  auto mesh = dschat::make_mesh(world, 2, 2);
  ASSERT_TRUE(mesh.tp);
  auto& stage = *mesh.tp;
  // Stage 0 (world rank 0 or 2) sends activations to stage 1, which sends back a gradient that depends on both.
  const at::Tensor input = at::arange(6, at::kDouble).reshape({2, 3}) + 100 * me;
  if (stage.rank() == 0) {
    stage.send(input, 1);
    at::Tensor grad = at::empty({2, 3}, at::kDouble);
    stage.recv(grad, 1);
    EXPECT_TRUE(at::equal(grad, 2 * input + (me + 1))) << "stage 0 (world rank " << me << ") got " << grad;
  } else {
    at::Tensor activations = at::empty({2, 3}, at::kDouble);
    stage.recv(activations, 0);
    EXPECT_TRUE(at::equal(activations, at::arange(6, at::kDouble).reshape({2, 3}) + 100 * (me - 1)))
        << "stage 1 (world rank " << me << ") got " << activations;
    stage.send(2 * activations + me, 0);
  }
  // Tags: two messages to the same peer, received in the other order.
  if (stage.rank() == 0) {
    auto first = stage.send_async(at::full({4}, 1, at::kLong), 1, /*tag=*/1);
    auto second = stage.send_async(at::full({4}, 2, at::kLong), 1, /*tag=*/2);
    first.wait();
    second.wait();
  } else {
    at::Tensor two = at::empty({4}, at::kLong), one = at::empty({4}, at::kLong);
    auto pending = stage.recv_async(two, 0, 2);
    stage.recv(one, 0, 1);
    pending.wait();
    EXPECT_TRUE(at::equal(one, at::full({4}, 1, at::kLong))) << one;
    EXPECT_TRUE(at::equal(two, at::full({4}, 2, at::kLong))) << two;
  }
  // Bad peers, refused before anything is sent.
  using E = std::invalid_argument;
  at::Tensor t = at::zeros({2});
  EXPECT_CONTAINS(message_of<E>([&] { world.send(t, me); }),
                  fmt::format("rank {0}/4: send destination rank {0} is this rank: a rank cannot send to itself", me));
  EXPECT_CONTAINS(message_of<E>([&] { world.recv(t, me); }), "a rank cannot receive from itself");
  EXPECT_CONTAINS(message_of<E>([&] { world.send(t, 4); }),
                  "send destination rank 4 is out of range: this communicator has ranks 0..3 (size 4)");
  EXPECT_CONTAINS(message_of<E>([&] { world.recv(t, -1); }), "recv source rank -1 is out of range");
  EXPECT_CONTAINS(message_of<E>([&] { stage.send(t, 2); }),
                  fmt::format("of group {} (world rank {}): send destination rank 2 is out of range",
                              me < 2 ? "[0, 1]" : "[2, 3]", me));
  EXPECT_CONTAINS(message_of<E>([&] { world.send(t, (me + 1) % n, -3); }), "tag -3 is negative");
  at::Tensor strided = at::zeros({4, 4}).t();
  EXPECT_CONTAINS(message_of<E>([&] { world.recv(strided, (me + 1) % n); }), "of a non-contiguous tensor");
  world.barrier();
}

// Rank 1 dies (`signal`: KILL) or stops answering (STOP) while rank 0 waits in recv on a group of both; rank 0
// writes what it was told and after how long.
void peer_fails_scenario(dschat::Communicator& world, int signal) {
  ASSERT_EQ(world.size(), 2);
  auto pair = world.new_group({0, 1});
  ASSERT_TRUE(pair);
  pair->barrier();
  if (world.rank() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // rank 0 is in recv by now
    ::raise(signal);
    std::this_thread::sleep_for(std::chrono::seconds(120));  // not reached for KILL; STOP is killed by the launcher
    return;
  }
  at::Tensor t = at::zeros({8});
  const auto start = std::chrono::steady_clock::now();
  const std::string error = message_of<dschat::DistributedError>([&] { pair->recv(t, 1); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const char* dir = std::getenv(kScenarioDirEnv);
  std::ofstream(fs::path(dir) / "error.txt") << error;
  std::ofstream(fs::path(dir) / "recv-seconds.txt") << seconds;
}

}  // namespace

// The body of one rank, run by the processes the Communicator tests start; skipped in a plain test run.
TEST(CommunicatorWorker, Rank) {
  const char* scenario = std::getenv(kScenarioEnv);
  if (scenario == nullptr) GTEST_SKIP() << "started by the Communicator* tests";
  const std::string name = scenario;
  dschat::DistributedOptions options;
  options.backend = "gloo";
  options.timeout_s = name == "stopped" ? 6 : 60;
  const auto env = dschat::detect_launch_environment();
  std::ofstream(fs::path(std::getenv(kScenarioDirEnv)) / fmt::format("rank{}.pid", env.rank)) << ::getpid();
  dschat::init_world(env, options);
  auto& world = dschat::world();
  if (name == "mesh") mesh_scenario(world);
  else if (name == "p2p") p2p_scenario(world);
  else if (name == "killed") peer_fails_scenario(world, SIGKILL);
  else if (name == "stopped") peer_fails_scenario(world, SIGSTOP);
  else FAIL() << "unknown scenario " << name;
}

// One process: new_group({0}) is another size-1 communicator, a mesh is 1 x 1, and every bad argument is named.
TEST(CommunicatorGroups, OneRankWorld) {
  auto& world = dschat::world();
  ASSERT_EQ(world.size(), 1);
  auto group = world.new_group({0});
  ASSERT_TRUE(group);
  EXPECT_EQ(group->size(), 1);
  EXPECT_EQ(group->rank(), 0);
  EXPECT_EQ(group->world_ranks(), std::vector<int>{0});
  at::Tensor t = floats({3, 4});
  group->all_reduce(t);
  group->barrier();
  EXPECT_EQ(values_of(t), (std::vector<float>{3, 4}));
  EXPECT_EQ(group->sum(2.5), 2.5);
  auto mesh = dschat::make_mesh(world, 1, 1);
  ASSERT_TRUE(mesh.dp && mesh.tp);
  EXPECT_EQ(mesh.tp->size(), 1);

  using E = std::invalid_argument;
  EXPECT_CONTAINS(message_of<E>([&] { world.new_group({}); }),
                  "rank 0/1: new_group([]): a group needs at least one rank");
  EXPECT_CONTAINS(message_of<E>([&] { world.new_group({1}); }),
                  "new_group([1]): rank 1 is out of range: this communicator has ranks 0..0 (size 1)");
  EXPECT_CONTAINS(message_of<E>([&] { world.new_group({0, 0}); }), "new_group([0, 0]): rank 0 appears twice");
  EXPECT_CONTAINS(message_of<E>([&] { group->send(t, 0); }), "send destination rank 0 is this rank");
  EXPECT_CONTAINS(message_of<E>([&] { world.recv(t, 1); }), "recv source rank 1 is out of range");
  EXPECT_CONTAINS(message_of<E>([&] { dschat::make_mesh(world, 2, 1); }), "make_mesh(dp 2, tp 1)");
}

TEST(CommunicatorGroups, TwoByTwoMeshOnFourGlooRanks) {
  auto ranks = start_ranks("mesh", 4);
  expect_all_passed(ranks);
  std::cout << fmt::format("4-rank mesh scenario: {:.2f} s\n", ranks.seconds);
}

TEST(CommunicatorPointToPoint, RingPipelineAndTagsOnFourGlooRanks) {
  auto ranks = start_ranks("p2p", 4);
  expect_all_passed(ranks);
  std::cout << fmt::format("4-rank send/recv scenario: {:.2f} s\n", ranks.seconds);
}

// Rank 1 is killed while rank 0 waits for its tensor: Gloo sees the connection close, and rank 0's recv throws
// at once (well within the 60 s timeout), naming the rank, its group and the operation.
TEST(CommunicatorPointToPoint, APeerKilledDuringRecvFailsTheReceiver) {
  auto ranks = start_ranks("killed", 2);
  const fs::path dir = out_root() / "comm-killed";
  EXPECT_EQ(ranks.rc[0], 0) << ranks.log[0];
  EXPECT_NE(ranks.rc[1], 0) << ranks.log[1];
  const std::string error = read_text(dir / "error.txt");
  EXPECT_CONTAINS(error, "rank 0/2 of group [0, 1] (world rank 0): recv from rank 1 of 8 Float elements failed (gloo)");
  EXPECT_CONTAINS(error, "died");
  const auto seconds = read_text(dir / "recv-seconds.txt");
  ASSERT_FALSE(seconds.empty()) << ranks.log[0];
  EXPECT_LT(std::stod(seconds), 30.0) << error;
  std::cout << fmt::format("rank 0's recv failed {} s after it started (rank 1 killed at 0.5 s): {}\n", seconds, error);
}

// Rank 1 stops answering (SIGSTOP: alive, its connections open): rank 0's recv gives up at the 6 s timeout.
TEST(CommunicatorPointToPoint, AStoppedPeerFailsTheReceiverAtTheTimeout) {
  auto ranks = start_ranks("stopped", 2, /*kill_after_rank0=*/true);
  const fs::path dir = out_root() / "comm-stopped";
  EXPECT_EQ(ranks.rc[0], 0) << ranks.log[0];
  const std::string error = read_text(dir / "error.txt");
  EXPECT_CONTAINS(error, "rank 0/2 of group [0, 1] (world rank 0): recv from rank 1 of 8 Float elements failed");
  EXPECT_CONTAINS(error, "timeout (6 s");
  const auto seconds = read_text(dir / "recv-seconds.txt");
  ASSERT_FALSE(seconds.empty()) << ranks.log[0];
  EXPECT_GT(std::stod(seconds), 5.0) << error;
  EXPECT_LT(std::stod(seconds), 6.0 + 10.0) << error;
  std::cout << fmt::format("rank 0's recv failed {} s after it started (timeout 6 s): {}\n", seconds, error);
}
