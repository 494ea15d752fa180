// `dschat train`: DeepSpeed-Chat's one-line launcher (e2e_rlhf.py / train.py). It writes the pipeline those flags
// mean into the output folder, prints how to rerun it, and runs it in this process (one process), or prints the
// torchrun line (several).
#include <algorithm>
#include <iostream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../command_support.h"
#include "dschat/framework/cli.h"
#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/model.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;

namespace dschat {
namespace {

constexpr const char* kSynopsis =
    "--actor-model DIR --reward-model DIR --data FILE... [--step 1 2 3] "
    "[--deployment-type single_gpu|single_node|multi_node | --num-gpus N] [--actor-zero-stage N] "
    "[--reward-zero-stage N] [--output-dir DIR] [--random-init] [--set key.path=value ...]";

struct TrainPlan {
  fs::path actor, reward;
  std::vector<fs::path> data;
  std::set<int> steps;
  std::string deployment;  // single_gpu | single_node | multi_node
  int processes = 1;       // per node
  std::optional<int> actor_zero_stage, reward_zero_stage;
  fs::path output_dir;
  bool random_init = false;
};

std::string toml_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

bool has_weights(const fs::path& dir) {
  return fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json");
}

// The largest sequence the model's position table takes, capped at DeepSpeed-Chat's 512.
int64_t sequence_limit(const fs::path& dir) {
  auto config = read_hf_config(dir);
  int64_t limit = 512;
  for (const char* key : {"max_position_embeddings", "n_positions"})
    if (config.contains(key) && config[key].is_number_integer()) limit = std::min(limit, config[key].get<int64_t>());
  return limit;
}

// zero stage N (DeepSpeed-Chat's --*-zero-stage): stage 0 is plain data parallelism, or nothing for one process.
std::string strategy_for(std::optional<int> zero_stage, int world) {
  const int stage = zero_stage.value_or(world > 1 ? 2 : 0);  // DeepSpeed-Chat's multi-GPU scripts use ZeRO-2
  if (stage == 0) return world > 1 ? "{ plugin = \"ddp\" }" : "{ plugin = \"single\" }";
  return fmt::format("{{ plugin = \"zero\", stage = {} }}", stage);
}

TrainPlan read_plan(const po::variables_map& vm) {
  TrainPlan plan;
  plan.actor = resolve_model_flag(vm["actor-model"].as<std::string>(), "--actor-model");
  for (int s : vm["step"].as<std::vector<int>>()) {
    if (s < 1 || s > 3) throw CommandError(fmt::format("--step {}: steps are 1 (SFT), 2 (reward model), 3 (PPO)", s));
    if (!plan.steps.insert(s).second) throw CommandError(fmt::format("--step {} is given twice", s));
  }
  const bool needs_reward = plan.steps.count(2) || plan.steps.count(3);
  if (needs_reward) {
    if (!vm.count("reward-model"))
      throw CommandError("--reward-model is required for steps 2 and 3 (the model the reward model starts from)");
    plan.reward = resolve_model_flag(vm["reward-model"].as<std::string>(), "--reward-model");
  }
  if (plan.steps.count(3) && !plan.steps.count(2) && !fs::exists(plan.reward / "value_head.safetensors"))
    throw CommandError(fmt::format("--step 3 without 2 needs a trained reward model as --reward-model, and {} has no "
                                   "value_head.safetensors (a reward stage's final/ folder has one)",
                                   plan.reward.string()));
  for (const auto& file : vm["data"].as<std::vector<std::string>>()) {
    if (!fs::exists(file)) throw CommandError(fmt::format("--data {}: no such file", file));
    plan.data.push_back(fs::absolute(file));
  }

  // --deployment-type (today's launcher) and --num-gpus (the first release's) say the same thing; both are fine
  // when they agree.
  const bool typed = !vm["deployment-type"].defaulted();
  plan.deployment = vm["deployment-type"].as<std::string>();
  if (plan.deployment != "single_gpu" && plan.deployment != "single_node" && plan.deployment != "multi_node")
    throw CommandError(fmt::format("--deployment-type {}: expected single_gpu, single_node or multi_node",
                                   plan.deployment));
  if (vm.count("num-gpus")) {
    plan.processes = vm["num-gpus"].as<int>();
    if (plan.processes < 1) throw CommandError("--num-gpus must be at least 1");
    if (typed && plan.deployment == "single_gpu" && plan.processes != 1)
      throw CommandError(fmt::format("--deployment-type single_gpu contradicts --num-gpus {}: one GPU is one process; "
                                     "use single_node for {} GPUs",
                                     plan.processes, plan.processes));
    if (typed && plan.deployment != "single_gpu" && plan.processes == 1)
      throw CommandError(fmt::format("--deployment-type {} contradicts --num-gpus 1", plan.deployment));
    if (!typed) plan.deployment = plan.processes == 1 ? "single_gpu" : "single_node";
  } else if (plan.deployment != "single_gpu") {
    plan.processes = 8;  // DeepSpeed-Chat's single_node / multi_node scripts assume 8 GPUs per node
  }
  auto zero = [&](const char* flag) -> std::optional<int> {
    if (!vm.count(flag)) return std::nullopt;
    const int stage = vm[flag].as<int>();
    if (stage < 0 || stage > 3) throw CommandError(fmt::format("--{} {}: ZeRO stages are 0, 1, 2, 3", flag, stage));
    return stage;
  };
  plan.actor_zero_stage = zero("actor-zero-stage");
  plan.reward_zero_stage = zero("reward-zero-stage");
  if (plan.reward_zero_stage && !needs_reward)
    throw CommandError("--reward-zero-stage is given but --step runs neither step 2 nor step 3");
  if (plan.actor_zero_stage && !plan.steps.count(1) && !plan.steps.count(3))
    throw CommandError("--actor-zero-stage is given but --step runs neither step 1 nor step 3");
  plan.output_dir = fs::absolute(vm["output-dir"].as<std::string>());
  plan.random_init = vm.count("random-init") > 0;
  for (const auto& [flag, dir] : {std::pair{"--actor-model", plan.actor}, std::pair{"--reward-model", plan.reward}}) {
    if (dir.empty() || plan.random_init || has_weights(dir)) continue;
    throw CommandError(fmt::format("{} {}: no weights (model.safetensors); pass --random-init to train from a random "
                                   "initialisation of its config.json",
                                   flag, dir.string()));
  }
  return plan;
}

// The pipeline the flags mean. Hyperparameters are DeepSpeed-Chat's opt/single_node recipes (run_1.3b.sh for the
// actor, run_350m.sh for the reward model), written out so they can be edited in the file.
std::string pipeline_toml(const TrainPlan& plan, const std::vector<std::string>& overrides) {
  const int world = plan.deployment == "single_gpu" ? 1 : plan.processes;
  int64_t max_seq_len = sequence_limit(plan.actor);
  if (!plan.reward.empty()) max_seq_len = std::min(max_seq_len, sequence_limit(plan.reward));
  const std::string init = plan.random_init ? "random" : "pretrained";
  std::string datasets;
  for (const auto& file : plan.data) datasets += (datasets.empty() ? "" : ", ") + toml_string(file.string());

  std::string toml = "# Written by `dschat train`; rerun with `dschat run` on this file (the command it printed).\n";
  for (const auto& o : overrides) toml += "# with --set " + o + "\n";
  toml += fmt::format("[pipeline]\nname = \"train\"\noutput_dir = \".\"\nseed = 1234\n\n");
  toml += fmt::format("[models.actor]\npath = {}\ninit = \"{}\"\n\n", toml_string(plan.actor.string()), init);
  if (!plan.reward.empty())
    toml += fmt::format("[models.critic]\npath = {}\ninit = \"{}\"\n\n", toml_string(plan.reward.string()),
                        plan.steps.count(2) ? init : "pretrained");
  toml += fmt::format("[data]\ndatasets = [{}]\nsplit = [2, 4, 4]\nmax_seq_len = {}\nmax_prompt_seq_len = {}\n\n",
                      datasets, max_seq_len, max_seq_len / 2);
  if (plan.steps.count(1))
    toml += fmt::format(
        "[[stage]]                         # step 1: supervised fine-tuning of the actor\nname = \"sft\"\n"
        "algorithm = \"sft\"\nmodel = \"actor\"\nepochs = 16\nper_device_train_batch_size = 8\n"
        "learning_rate = 9.65e-6\nweight_decay = 0.0\nnum_warmup_steps = 0\nstrategy = {}\n\n",
        strategy_for(plan.actor_zero_stage, world));
  if (plan.steps.count(2))
    toml += fmt::format(
        "[[stage]]                         # step 2: the reward model\nname = \"rm\"\nalgorithm = \"reward\"\n"
        "model = \"critic\"\nepochs = 1\nper_device_train_batch_size = 4\nlearning_rate = 5e-5\n"
        "weight_decay = 0.1\nstrategy = {}\n\n",
        strategy_for(plan.reward_zero_stage, world));
  if (plan.steps.count(3))
    toml += fmt::format(
        "[[stage]]                         # step 3: PPO of the actor against the reward model, with EMA\n"
        "name = \"rlhf\"\nalgorithm = \"ppo\"\nactor = \"{}\"\ncritic = \"{}\"\nepochs = 1\n"
        "per_device_generation_batch_size = 4\nper_device_training_batch_size = 4\nactor_learning_rate = 9.65e-6\n"
        "critic_learning_rate = 5e-6\nnum_warmup_steps = 100\n"
        "generation = {{ plugin = \"kv-cache\", max_new_tokens = {}, do_sample = true }}\n"
        "hooks = [{{ plugin = \"ema\", beta = 0.992 }}]\nstrategy = {}   # the actor's ZeRO stage; the critic shares it\n",
        plan.steps.count(1) ? "sft" : "actor", plan.steps.count(2) ? "rm" : "critic", max_seq_len / 2,
        strategy_for(plan.actor_zero_stage, world));
  return toml;
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// This executable as the printed commands should call it: its own path, so they work from a build folder too.
std::string this_executable() {
  std::error_code ec;
  const auto self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("dschat") : self.string();
}

int train(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("actor-model", po::value<std::string>()->required(), "the actor's HF folder or Hub id")(
      "reward-model", po::value<std::string>(), "the reward model's starting HF folder or Hub id")(
      "data", po::value<std::vector<std::string>>()->multitoken()->required(),
      "JSONL datasets (rm-static / pairwise / sft schema), split 2:4:4 over the steps")(
      "step", po::value<std::vector<int>>()->multitoken()->default_value({1, 2, 3}, "1 2 3"), "steps to run")(
      "deployment-type", po::value<std::string>()->default_value("single_gpu"),
      "single_gpu (one process) | single_node | multi_node (prints the torchrun line)")(
      "num-gpus", po::value<int>(), "processes per node (the first release's flag; 1 = single_gpu)")(
      "actor-zero-stage", po::value<int>(), "ZeRO stage of steps 1 and 3 (0: none)")(
      "reward-zero-stage", po::value<int>(), "ZeRO stage of step 2")(
      "output-dir", po::value<std::string>()->default_value("./output"), "the run folder")(
      "random-init", "models without weights start from a random initialisation of their config.json")(
      "set", po::value<std::vector<std::string>>()->composing(), "override a pipeline key, as for `dschat run`");
  auto vm = parse_flags("train", options, {}, args, kSynopsis);
  if (!vm) return 0;
  const TrainPlan plan = read_plan(*vm);
  std::vector<std::string> overrides;
  if (vm->count("set")) overrides = (*vm)["set"].as<std::vector<std::string>>();

  fs::create_directories(plan.output_dir);
  const fs::path file = plan.output_dir / "pipeline.toml";
  write_file_atomic(file, pipeline_toml(plan, overrides));
  std::string rerun = this_executable() + " run " + quoted(file.string());
  for (const auto& o : overrides) rerun += " --set " + quoted(o);
  std::cout << "dschat train: wrote " << file.string() << "\n";
  if (plan.deployment != "single_gpu") {
    const std::string nodes = plan.deployment == "multi_node"
                                  ? " --nnodes N --node-rank R --master-addr HOST --master-port 29500" : "";
    std::cout << fmt::format("run it on {} with:\n  torchrun --no-python{} --nproc-per-node {} {}\n",
                             plan.deployment == "multi_node" ? "every node" : "this node", nodes, plan.processes,
                             rerun);
    return 0;
  }
  std::cout << "rerun it with: " << rerun << "\n" << std::flush;
  std::vector<std::string> run_args = {"dschat", "run", file.string()};
  for (const auto& o : overrides) run_args.insert(run_args.end(), {"--set", o});
  std::vector<char*> argv;
  for (auto& a : run_args) argv.push_back(a.data());
  return cli_main(static_cast<int>(argv.size()), argv.data());
}

const bool registered = register_guarded_command("train", train);

}  // namespace
}  // namespace dschat
