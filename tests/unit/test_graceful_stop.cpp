// SIGTERM / SIGINT while a stage trains: the process finishes its step, saves a checkpoint, says how to resume
// and exits 128 + signal; rerunning the command resumes to the same final weights as a run never interrupted, with
// one clean metrics history (no step twice, one TensorBoard event file) and no leftover temporary folders. Under
// torchrun a signal to one rank stops both after the same step. The signal is real, sent by this test to the
// running process once its metrics show it is training.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using dschat::testing::run_command;

namespace {

const fs::path kOut = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "graceful-stop";

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The quickstart's tiny OPT through SFT (many short steps), then RM and PPO when `with_ppo`.
fs::path write_pipeline(const std::string& name, bool with_ppo) {
  fs::create_directories(kOut);
  const fs::path file = kOut / (name + ".toml");
  std::string text = fmt::format(R"([pipeline]
name = "{0}"
output_dir = "{1}"
seed = 11

[distributed]
timeout_s = 60

[strategy]
plugin = "single"

[models.actor]
path = "{2}/configs/quickstart/model"
init = "random"

[models.critic]
path = "{2}/configs/quickstart/model"
init = "random"

[data]
datasets = ["{2}/configs/quickstart/data/requests.jsonl"]
split = [2, 4, 4]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
epochs = 40
max_steps = {3}
per_device_train_batch_size = 4
learning_rate = 1e-3
num_warmup_steps = 2
)",
                                 name, (kOut / name).string(), DSCHAT_SOURCE_DIR, with_ppo ? 8 : 150);
  if (with_ppo)
    text += R"(
[[stage]]
name = "rm"
algorithm = "reward"
model = "critic"
max_steps = 8
per_device_train_batch_size = 8
learning_rate = 5e-4

[[stage]]
name = "rlhf"
algorithm = "ppo"
actor = "sft"
critic = "rm"
epochs = 2
per_device_generation_batch_size = 4
per_device_training_batch_size = 4
actor_learning_rate = 5e-5
critic_learning_rate = 5e-5
num_warmup_steps = 2
generation = { plugin = "kv-cache", max_new_tokens = 16, do_sample = true }
hooks = [{ plugin = "ema", beta = 0.9 }]
)";
  std::ofstream(file) << text;
  fs::remove_all(kOut / name);
  return file;
}

struct Child {
  pid_t pid = -1;
  fs::path log;
};

Child start(const std::string& command, const fs::path& log) {
  Child c;
  c.log = log;
  c.pid = fork();
  if (c.pid == 0) {
    setpgid(0, 0);  // its own group: a signal to the group reaches torchrun and its workers alike
    const std::string line = command + " > " + log.string() + " 2>&1";
    execl("/bin/sh", "sh", "-c", ("exec " + line).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return c;
}

int wait_exit(const Child& c) {
  int status = 0;
  waitpid(c.pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<nlohmann::json> metric_rows(const fs::path& stage_dir) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(stage_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto row = nlohmann::json::parse(line, nullptr, false);
    if (!row.is_discarded()) rows.push_back(row);
  }
  return rows;
}

// Waits until `stage_dir`'s metrics hold a `tag` row at step >= `step` (the stage is well into training).
bool wait_for_row(const fs::path& stage_dir, const std::string& tag, int64_t step, const Child& c) {
  for (int i = 0; i < 6000; ++i) {
    for (const auto& row : metric_rows(stage_dir))
      if (row["tag"] == tag && row["step"].get<int64_t>() >= step) return true;
    if (waitpid(c.pid, nullptr, WNOHANG) != 0) return false;  // it ended first
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

void expect_one_clean_history(const fs::path& stage_dir) {
  std::set<std::pair<std::string, int64_t>> seen;
  for (const auto& row : metric_rows(stage_dir))
    EXPECT_TRUE(seen.insert({row["tag"].get<std::string>(), row["step"].get<int64_t>()}).second)
        << stage_dir << ": " << row["tag"] << " at step " << row["step"] << " twice";
  int event_files = 0;
  for (const auto& entry : fs::directory_iterator(stage_dir / "tensorboard"))
    event_files += entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  EXPECT_EQ(event_files, 1) << stage_dir;
}

void expect_same_weights(const fs::path& a, const fs::path& b) {
  auto ra = dschat::safetensors::CheckpointReader::open(a);
  auto rb = dschat::safetensors::CheckpointReader::open(b);
  ASSERT_EQ(ra.names(), rb.names());
  for (const auto& name : ra.names())
    EXPECT_TRUE(ra.load(name).equal(rb.load(name))) << name << " differs between " << a << " and " << b;
}

TEST(GracefulStop, SigtermMidSftSavesAndTheResumedRunEndsWithTheUninterruptedWeights) {
  const std::string exe = DSCHAT_EXE;
  auto reference = write_pipeline("sft-reference", false);
  auto ref = run_command(exe + " run " + reference.string());
  ASSERT_EQ(ref.exit_code, 0) << ref.output;

  auto file = write_pipeline("sft-stopped", false);
  const fs::path stage = kOut / "sft-stopped" / "sft";
  Child child = start(exe + " run " + file.string(), kOut / "sft-stopped.log");
  ASSERT_TRUE(wait_for_row(stage, "train/loss", 5, child)) << read_text(child.log);
  kill(child.pid, SIGTERM);
  EXPECT_EQ(wait_exit(child), 143) << read_text(child.log);
  const std::string log = read_text(child.log);
  EXPECT_NE(log.find("SIGTERM received: stopping after the current step"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped by SIGTERM after step"), std::string::npos) << log;
  EXPECT_NE(log.find("to resume, run the same command again"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(stage / "final" / "COMPLETE"));
  ASSERT_TRUE(fs::exists(stage / "checkpoints")) << log;

  // A save killed halfway (left by some earlier crash) is cleaned up by the rerun.
  fs::create_directories(stage / "checkpoints" / "step-999.tmp-4242");
  std::ofstream(stage / "checkpoints" / "step-999.tmp-4242" / "model.safetensors") << "partial";
  auto resumed = run_command(exe + " run " + file.string());
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("stage sft: resuming from"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("left by an interrupted save"), std::string::npos) << resumed.output;
  EXPECT_FALSE(fs::exists(stage / "checkpoints" / "step-999.tmp-4242"));
  expect_same_weights(kOut / "sft-reference" / "sft" / "final", stage / "final");
  expect_one_clean_history(stage);
  // The history is the uninterrupted one: the same steps, the same losses.
  std::map<int64_t, double> a, b;
  for (const auto& r : metric_rows(kOut / "sft-reference" / "sft"))
    if (r["tag"] == "train/loss") a[r["step"].get<int64_t>()] = r["value"].get<double>();
  for (const auto& r : metric_rows(stage))
    if (r["tag"] == "train/loss") b[r["step"].get<int64_t>()] = r["value"].get<double>();
  EXPECT_EQ(a, b);
}

TEST(GracefulStop, SigintMidPpoSavesAndTheResumedRunEndsWithTheUninterruptedWeights) {
  const std::string exe = DSCHAT_EXE;
  auto reference = write_pipeline("ppo-reference", true);
  auto ref = run_command(exe + " run " + reference.string());
  ASSERT_EQ(ref.exit_code, 0) << ref.output;

  auto file = write_pipeline("ppo-stopped", true);
  const fs::path stage = kOut / "ppo-stopped" / "rlhf";
  Child child = start(exe + " run " + file.string(), kOut / "ppo-stopped.log");
  ASSERT_TRUE(wait_for_row(stage, "reward/mean", 1, child)) << read_text(child.log);
  kill(child.pid, SIGINT);
  EXPECT_EQ(wait_exit(child), 130) << read_text(child.log);
  EXPECT_NE(read_text(child.log).find("stopped by SIGINT after rollout"), std::string::npos) << read_text(child.log);
  EXPECT_FALSE(fs::exists(stage / "final" / "COMPLETE"));

  auto resumed = run_command(exe + " run " + file.string());
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("stage rlhf: resuming from"), std::string::npos) << resumed.output;
  expect_same_weights(kOut / "ppo-reference" / "rlhf" / "final", stage / "final");
  expect_same_weights(kOut / "ppo-reference" / "rlhf" / "ema", stage / "ema");
  expect_one_clean_history(stage);
}

// torchrun, two ranks: SIGTERM reaches only rank 1's process; both ranks stop after the same step (rank 0 learns
// of it through the per-step all-reduce), and the resumed 2-rank run ends where an uninterrupted one does.
TEST(GracefulStop, OneSignalledRankStopsEveryRankAtTheSameStep) {
  const std::string exe = DSCHAT_EXE;
  const std::string torchrun =
      (fs::path(DSCHAT_TEST_PYTHON).parent_path() / "torchrun").string() + " --standalone --nproc-per-node 2 --no-python ";
  auto reference = write_pipeline("ddp-reference", false);
  auto ref = run_command(torchrun + exe + " run " + reference.string() + " --set strategy.plugin=ddp");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;

  auto file = write_pipeline("ddp-stopped", false);
  const fs::path stage = kOut / "ddp-stopped" / "sft";
  Child child = start(torchrun + exe + " run " + file.string() + " --set strategy.plugin=ddp", kOut / "ddp-stopped.log");
  ASSERT_TRUE(wait_for_row(stage, "train/loss", 5, child)) << read_text(child.log);
  // Rank 1: the dschat process whose environment says RANK=1.
  auto ranks = run_command(fmt::format("for p in $(pgrep -f 'run {}'); do "
                                       "tr '\\0' '\\n' < /proc/$p/environ | grep -qx RANK=1 && echo $p; done",
                                       file.string()));
  const pid_t rank1 = static_cast<pid_t>(std::atoi(ranks.output.c_str()));
  ASSERT_GT(rank1, 0) << ranks.output;
  kill(rank1, SIGTERM);
  wait_exit(child);  // torchrun reports the workers' exit 143 as a failure of its own
  const std::string log = read_text(child.log);
  EXPECT_NE(log.find("stopped by SIGTERM after step"), std::string::npos) << log;
  ASSERT_TRUE(fs::exists(stage / "checkpoints")) << log;

  auto resumed = run_command(torchrun + exe + " run " + file.string() + " --set strategy.plugin=ddp");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_weights(kOut / "ddp-reference" / "sft" / "final", stage / "final");
  expect_one_clean_history(stage);
}

}  // namespace
