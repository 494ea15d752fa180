// The user's commands on the quickstart models, end to end: `dschat train` runs the pipeline it writes, and that
// file rerun gives the same metrics; `dschat chat` through a pseudo-terminal and through piped stdin; `dschat eval
// reward` and `eval prompts` on the trained folders; and the bad input each refuses before doing any work.
#include <poll.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"

namespace fs = std::filesystem;
using dschat::testing::CommandResult;
using dschat::testing::run_command;
using dschat::testing::run_dschat;

namespace {

const std::string kQuickstart = std::string(DSCHAT_SOURCE_DIR) + "/configs/quickstart";

// Short, quickstart-like hyperparameters (train writes DeepSpeed-Chat's recipes for pretrained models).
const std::string kOverrides =
    "--set data.max_seq_len=96 --set data.max_prompt_seq_len=32 "
    "--set stage.sft.epochs=4 --set stage.sft.learning_rate=1e-3 --set stage.sft.per_device_train_batch_size=16 "
    "--set stage.rm.epochs=2 --set stage.rm.learning_rate=5e-4 --set stage.rm.per_device_train_batch_size=16 "
    "--set stage.rlhf.max_steps=12 --set stage.rlhf.per_device_generation_batch_size=16 "
    "--set stage.rlhf.per_device_training_batch_size=16 --set stage.rlhf.actor_learning_rate=5e-5 "
    "--set stage.rlhf.critic_learning_rate=5e-5 --set stage.rlhf.num_warmup_steps=10 "
    "--set stage.rlhf.generation.max_new_tokens=40";

fs::path run_dir() { return fs::path(DSCHAT_BINARY_DIR) / "test-output" / "user-commands" / "train"; }

// tag -> last value, leaving out wall-clock figures.
std::map<std::string, double> final_metrics(const fs::path& file) {
  std::map<std::string, double> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    auto row = nlohmann::json::parse(line);
    const auto tag = row["tag"].get<std::string>();
    if (tag.starts_with("time/") || tag == "samples_per_s" || tag.starts_with("tflops")) continue;
    out[tag] = row["value"].get<double>();
  }
  return out;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

class UserCommands : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(run_dir().parent_path());
    train_ = run_dschat("train --actor-model " + kQuickstart + "/model --reward-model " + kQuickstart +
                        "/model --random-init --data " + kQuickstart + "/data/requests.jsonl --output-dir " +
                        run_dir().string() + " " + kOverrides);
  }
  static fs::path actor() { return run_dir() / "sft" / "final"; }
  static CommandResult train_;
};
CommandResult UserCommands::train_;

TEST_F(UserCommands, TrainWritesThePipelineAndItsRerunGivesTheSameMetrics) {
  ASSERT_EQ(train_.exit_code, 0) << train_.output;
  const fs::path file = run_dir() / "pipeline.toml";
  EXPECT_NE(train_.output.find("wrote " + file.string()), std::string::npos) << train_.output;
  EXPECT_NE(train_.output.find(std::string("rerun it with: ") + DSCHAT_EXE + " run '" + file.string() + "' --set "),
            std::string::npos) << train_.output;
  for (const char* stage : {"sft", "rm", "rlhf"}) EXPECT_TRUE(fs::exists(run_dir() / stage / "final" / "COMPLETE"));

  const fs::path again = run_dir().parent_path() / "rerun";
  auto rerun = run_dschat("run " + file.string() + " " + kOverrides + " --set 'pipeline.output_dir=\"" +
                          again.string() + "\"'");
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  for (const char* stage : {"sft", "rm", "rlhf"}) {
    auto first = final_metrics(run_dir() / stage / "metrics.jsonl");
    auto second = final_metrics(again / stage / "metrics.jsonl");
    EXPECT_GT(first.size(), 5u) << stage;
    EXPECT_EQ(first, second) << stage;
  }
}

TEST_F(UserCommands, TrainPrintsTheTorchrunLineForSeveralProcesses) {
  const fs::path out = run_dir().parent_path() / "two-procs";
  auto result = run_dschat("train --actor-model " + kQuickstart + "/model --reward-model " + kQuickstart +
                           "/model --random-init --num-gpus 2 --actor-zero-stage 3 --data " + kQuickstart +
                           "/data/requests.jsonl --output-dir " + out.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find(std::string("torchrun --no-python --nproc-per-node 2 ") + DSCHAT_EXE + " run '" +
                               (out / "pipeline.toml").string()),
            std::string::npos) << result.output;
  std::ifstream in(out / "pipeline.toml");
  std::string toml((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(count(toml, "strategy = { plugin = \"zero\", stage = 3 }"), 2u) << toml;  // sft and rlhf
  EXPECT_EQ(count(toml, "strategy = { plugin = \"zero\", stage = 2 }"), 1u) << toml;  // rm: the default
  auto valid = run_dschat("validate " + (out / "pipeline.toml").string());
  EXPECT_EQ(valid.exit_code, 0) << valid.output;
  EXPECT_FALSE(fs::exists(out / "sft")) << "several processes: printed, not run";
}

TEST_F(UserCommands, TrainRefusesContradictoryFlags) {
  const std::string base = "train --actor-model " + kQuickstart + "/model --reward-model " + kQuickstart +
                           "/model --random-init --data " + kQuickstart + "/data/requests.jsonl --output-dir " +
                           (run_dir().parent_path() / "refused").string();
  auto contradict = run_dschat(base + " --deployment-type single_gpu --num-gpus 4");
  EXPECT_EQ(contradict.exit_code, 2);
  EXPECT_NE(contradict.output.find("--deployment-type single_gpu contradicts --num-gpus 4"), std::string::npos)
      << contradict.output;
  auto reward_zero = run_dschat(base + " --step 1 --reward-zero-stage 2");
  EXPECT_EQ(reward_zero.exit_code, 2);
  EXPECT_NE(reward_zero.output.find("--reward-zero-stage is given but --step runs neither step 2 nor step 3"),
            std::string::npos) << reward_zero.output;
  auto no_rm = run_dschat(base + " --step 3");
  EXPECT_EQ(no_rm.exit_code, 2);
  EXPECT_NE(no_rm.output.find("--step 3 without 2 needs a trained reward model"), std::string::npos) << no_rm.output;
  auto no_weights = run_dschat("train --actor-model " + kQuickstart + "/model --reward-model " + kQuickstart +
                               "/model --data " + kQuickstart + "/data/requests.jsonl");
  EXPECT_EQ(no_weights.exit_code, 2);
  EXPECT_NE(no_weights.output.find("no weights (model.safetensors); pass --random-init"), std::string::npos)
      << no_weights.output;
  EXPECT_FALSE(fs::exists(run_dir().parent_path() / "refused")) << "nothing is written for refused flags";
}

TEST_F(UserCommands, ChatThroughPipedStdin) {
  ASSERT_EQ(train_.exit_code, 0) << train_.output;
  auto result = run_command("printf '" + std::string("What is the opposite of cold?\\nGreet me.\\nclear\\n"
                                                      "What is the opposite of cold?\\nquit\\nnever read\\n") +
                            "' | " + DSCHAT_EXE + " chat --greedy --max-new-tokens 40 --model " + actor().string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(count(result.output, "assistant> "), 3u) << result.output;
  EXPECT_EQ(count(result.output, "(history cleared)"), 1u) << result.output;
  EXPECT_EQ(result.output.find("user> "), std::string::npos) << "no prompts when stdin is not a terminal";
  // Greedy and history cleared: the question asked again gets the answer it got first.
  std::vector<std::string> answers;
  std::regex answer_line("assistant> ([^\\n]*)");
  for (std::sregex_iterator it(result.output.begin(), result.output.end(), answer_line), end; it != end; ++it)
    answers.push_back((*it)[1]);
  ASSERT_EQ(answers.size(), 3u);
  EXPECT_FALSE(answers[0].empty());
  EXPECT_EQ(answers[0], answers[2]);
  EXPECT_EQ(answers[0].find("Human:"), std::string::npos) << "the answer stops at the next turn";

  // End of input ends the conversation like quit.
  auto eof = run_command(std::string("printf 'Greet me.\\n' | ") + DSCHAT_EXE + " chat --greedy --model " +
                         actor().string());
  EXPECT_EQ(eof.exit_code, 0) << eof.output;
  EXPECT_EQ(count(eof.output, "assistant> "), 1u) << eof.output;
}

// Reads from the terminal until `marker` appears after `from`; returns where it ends (npos on timeout or EOF).
size_t read_until(int fd, std::string& screen, const std::string& marker, size_t from, int timeout_s = 120) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (true) {
    if (auto at = screen.find(marker, from); at != std::string::npos) return at + marker.size();
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::string::npos;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buffer[4096];
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n <= 0) return std::string::npos;  // the child closed the terminal
    screen.append(buffer, static_cast<size_t>(n));
  }
}

TEST_F(UserCommands, ChatThroughAPseudoTerminal) {
  ASSERT_EQ(train_.exit_code, 0) << train_.output;
  int fd = -1;
  const pid_t pid = ::forkpty(&fd, nullptr, nullptr, nullptr);
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl(DSCHAT_EXE, DSCHAT_EXE, "chat", "--greedy", "--max-new-tokens", "40", "--model", actor().c_str(), nullptr);
    ::_exit(127);
  }
  std::string screen;
  size_t at = read_until(fd, screen, "user> ", 0);
  ASSERT_NE(at, std::string::npos) << screen;
  EXPECT_NE(screen.find("`clear` resets the history"), std::string::npos) << "a terminal gets the banner: " << screen;
  std::vector<size_t> answer_starts;
  for (const std::string line : {"What is the opposite of cold?", "Greet me.", "clear", "What is the opposite of cold?"}) {
    const std::string typed = line + "\n";
    ASSERT_EQ(::write(fd, typed.data(), typed.size()), static_cast<ssize_t>(typed.size()));
    if (line != "clear") answer_starts.push_back(screen.size());
    at = read_until(fd, screen, "user> ", at);
    ASSERT_NE(at, std::string::npos) << "no prompt after '" << line << "': " << screen;
  }
  ASSERT_EQ(::write(fd, "quit\n", 5), 5);
  read_until(fd, screen, "\x01", at, 30);  // drain until the child exits
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::close(fd);
  ASSERT_TRUE(WIFEXITED(status)) << screen;
  EXPECT_EQ(WEXITSTATUS(status), 0) << screen;
  EXPECT_EQ(count(screen, "assistant> "), 3u) << screen;
  EXPECT_EQ(count(screen, "(history cleared)"), 1u) << screen;
}

TEST_F(UserCommands, ChatRefusesAFolderWithoutATokenizer) {
  ASSERT_EQ(train_.exit_code, 0) << train_.output;
  const fs::path bare = run_dir().parent_path() / "no-tokenizer";
  fs::create_directories(bare);
  fs::copy_file(actor() / "config.json", bare / "config.json", fs::copy_options::overwrite_existing);
  fs::copy_file(actor() / "model.safetensors", bare / "model.safetensors", fs::copy_options::overwrite_existing);
  auto result = run_command(std::string("printf 'hi\\n' | ") + DSCHAT_EXE + " chat --model " + bare.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("dschat chat: --model " + bare.string() + ": no usable tokenizer"), std::string::npos)
      << result.output;
  EXPECT_EQ(result.output.find("assistant>"), std::string::npos) << "refused before the conversation starts";
}

TEST_F(UserCommands, EvalRewardScoresPairsAndRefusesACausalLM) {
  ASSERT_EQ(train_.exit_code, 0) << train_.output;
  const std::string data = kQuickstart + "/data/requests.jsonl";
  auto result = run_dschat("eval reward --model " + (run_dir() / "rm" / "final").string() + " --data " + data +
                           " --max-seq-len 96 --limit 200");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(result.output, m, std::regex("accuracy: ([0-9.]+)"))) << result.output;
  EXPECT_GT(std::stod(m[1]), 0.7) << "chance is 0.5: " << result.output;
  EXPECT_NE(result.output.find("pairs: 200"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("chosen_mean_score: "), std::string::npos) << result.output;

  auto not_rm = run_dschat("eval reward --model " + actor().string() + " --data " + data);
  EXPECT_EQ(not_rm.exit_code, 2) << not_rm.output;
  EXPECT_NE(not_rm.output.find("--model " + actor().string() + ": not a reward model: no value_head.safetensors"),
            std::string::npos) << not_rm.output;
}

TEST_F(UserCommands, EvalPromptsShowsBothModelsAnswersAndScores) {
  ASSERT_EQ(train_.exit_code, 0) << train_.output;
  const fs::path prompts = run_dir().parent_path() / "prompts.txt";
  std::ofstream(prompts) << " Human: Greet me. Assistant:\n Human: What is the opposite of up? Assistant:\n";
  auto result = run_dschat("eval prompts --greedy --max-new-tokens 24 --baseline " + actor().string() + " --model " +
                           (run_dir() / "rlhf" / "final").string() + " --reward-model " +
                           (run_dir() / "rm" / "final").string() + " --prompts " + prompts.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(count(result.output, "==========Baseline: Greedy========= (reward "), 2u) << result.output;
  EXPECT_EQ(count(result.output, "==========finetune: Greedy========= (reward "), 2u) << result.output;
  EXPECT_NE(result.output.find("mean reward: baseline "), std::string::npos) << result.output;
}

}  // namespace
