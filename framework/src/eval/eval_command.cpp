// `dschat eval reward`: a reward model's pair accuracy on a JSONL file (DeepSpeed-Chat's rw_eval.py, over a whole
// file instead of two fixed pairs). `dschat eval prompts`: greedy answers of a baseline and a fine-tuned model side
// by side (prompt_eval.py), scored by a reward model when one is given.
#include <fstream>
#include <iostream>
#include <numeric>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../command_support.h"
#include "dschat/framework/cli.h"
#include "dschat/framework/data.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/tokenizer.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;

namespace dschat {
namespace {

// prompt_eval.py's English prompts.
const std::vector<std::string> kDeepSpeedChatPrompts = {
    " Human: Please tell me about Microsoft in a few sentence? Assistant:",
    " Human: Explain the moon landing to a 6 year old in a few sentences. Assistant:",
    " Human: Write a short poem about a wise frog. Assistant:",
    " Human: Who was president of the United States in 1955? Assistant:",
    " Human: How does a telescope work? Assistant:",
    " Human: Why do birds migrate south for the winter? Assistant:"};

// How the reward stage scored: its reward_model.json, else what it derives from the tokenizer.
RewardConventions conventions_of(const fs::path& dir, const Tokenizer& tokenizer) {
  RewardConventions conventions = reward_conventions(tokenizer);
  std::ifstream in(dir / "reward_model.json");
  if (!in) return conventions;
  try {
    auto json = nlohmann::json::parse(in);
    conventions.pad_token_id = json.value("pad_token_id", conventions.pad_token_id);
    conventions.num_padding_at_beginning = json.value("num_padding_at_beginning", conventions.num_padding_at_beginning);
  } catch (const nlohmann::json::exception& e) {
    throw CommandError(fmt::format("{}: not valid JSON: {}", (dir / "reward_model.json").string(), e.what()));
  }
  return conventions;
}

std::vector<SourcedExample> read_rows(const fs::path& file, const std::string& flag) {
  if (!fs::exists(file)) throw CommandError(fmt::format("{} {}: no such file", flag, file.string()));
  try {
    DatasetSpec spec;
    spec.path = file;
    spec.schema = detect_schema(file);
    int64_t skipped = 0;
    return parse_dataset(spec, 0, skipped);
  } catch (const DataError& e) {
    throw CommandError(fmt::format("{}: {}", flag, e.what()));
  }
}

int eval_reward(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("model", po::value<std::string>()->required(), "a reward stage's final/ folder")(
      "data", po::value<std::string>()->required(), "JSONL with prompt, chosen and rejected (rm-static or pairwise)")(
      "max-seq-len", po::value<int64_t>()->default_value(512), "prompt + answer tokens kept, as in training")(
      "batch-size", po::value<int64_t>()->default_value(8), "pairs scored together")(
      "limit", po::value<int64_t>()->default_value(0), "score only the first N pairs (0: all)")(
      "dtype", po::value<std::string>()->default_value("fp32"), "fp32 or bf16");
  auto vm = parse_flags("eval reward", options, {}, args,
                        "--model RM_DIR --data FILE [--max-seq-len N] [--batch-size N] [--limit N] [--dtype D]");
  if (!vm) return 0;
  const auto dtype = dtype_flag(*vm);
  const auto dir = resolve_model_flag((*vm)["model"].as<std::string>(), "--model");
  auto tokenizer = load_tokenizer(dir, "--model");
  auto rows = read_rows((*vm)["data"].as<std::string>(), "--data");
  const int64_t max_seq_len = (*vm)["max-seq-len"].as<int64_t>(), batch = (*vm)["batch-size"].as<int64_t>();
  if (batch < 1) throw CommandError("--batch-size must be at least 1");
  std::vector<TokenizedExample> pairs;
  for (const auto& row : rows) {
    if (row.text.rejected.empty())
      throw CommandError(fmt::format("--data {}:{}: no rejected answer: a pair needs prompt, chosen and rejected",
                                     (*vm)["data"].as<std::string>(), row.line));
    pairs.push_back(tokenize_example(*tokenizer, row.text, max_seq_len));
    if ((*vm)["limit"].as<int64_t>() > 0 && static_cast<int64_t>(pairs.size()) == (*vm)["limit"].as<int64_t>()) break;
  }
  if (pairs.empty()) throw CommandError("--data: the file holds no pairs");
  const auto conventions = conventions_of(dir, *tokenizer);
  PluginRegistry registry;
  registry.discover(PluginRegistry::search_paths({}));
  auto reward_model = load_reward_model(registry, dir, dtype, "--model");

  at::NoGradGuard no_grad;
  std::vector<at::Tensor> chosen, rejected;
  for (size_t start = 0; start < pairs.size(); start += batch) {
    std::vector<const TokenizedExample*> slice;
    for (size_t i = start; i < std::min(pairs.size(), start + batch); ++i) slice.push_back(&pairs[i]);
    auto collated = collate_pairs(slice, max_seq_len, conventions.pad_token_id);
    auto values = reward_model->values(collated.input_ids, collated.attention_mask).to(at::kFloat);
    auto scored = reward_pair_loss(values, collated.input_ids, conventions.pad_token_id,
                                   conventions.num_padding_at_beginning);
    chosen.push_back(scored.chosen_scores);
    rejected.push_back(scored.rejected_scores);
    std::cerr << fmt::format("\rscored {}/{} pairs", start + slice.size(), pairs.size()) << std::flush;
  }
  std::cerr << "\n";
  auto c = at::cat(chosen), r = at::cat(rejected);
  std::cout << fmt::format("pairs: {}\naccuracy: {:.4f}\nchosen_mean_score: {:.4f}\nrejected_mean_score: {:.4f}\n",
                           c.numel(), c.gt(r).to(at::kFloat).mean().item<double>(), c.mean().item<double>(),
                           r.mean().item<double>());
  return 0;
}

std::vector<std::string> read_prompts(const fs::path& file) {
  if (!fs::exists(file)) throw CommandError(fmt::format("--prompts {}: no such file", file.string()));
  std::vector<std::string> prompts;
  if (file.extension() == ".jsonl") {
    for (const auto& row : read_rows(file, "--prompts")) prompts.push_back(row.text.prompt);
  } else {  // one prompt per non-empty line, used as written
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);)
      if (line.find_first_not_of(" \t\r") != std::string::npos) prompts.push_back(line);
  }
  if (prompts.empty()) throw CommandError(fmt::format("--prompts {}: no prompts in the file", file.string()));
  return prompts;
}

struct Answered {
  std::vector<std::string> answers;
  std::vector<std::vector<int64_t>> ids;  // prompt + answer tokens, for scoring
};

Answered greedy_answers(PluginRegistry& registry, const fs::path& dir, const Tokenizer& tokenizer,
                        const std::vector<std::string>& prompts, const po::variables_map& vm, const std::string& flag) {
  auto generator = make_generator(registry, vm);
  auto model = load_causal_lm(registry, dir, dtype_flag(vm), flag, device_flag(vm));
  SamplingOptions sampling = sampling_for(*generator, tokenizer, vm, dir);
  Answered out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::cerr << fmt::format("\r{}: prompt {}/{}", flag, i + 1, prompts.size()) << std::flush;
    auto ids = tokenizer.encode(prompts[i]);
    auto prompt = at::tensor(ids, at::kLong).unsqueeze(0);
    auto result = generator->generate(*model, prompt, at::ones_like(prompt), sampling);
    std::vector<int64_t> answer;
    for (int64_t t = 0; t < result.answer_mask.size(1); ++t)
      if (result.answer_mask[0][t].item<int64_t>()) answer.push_back(result.sequences[0][ids.size() + t].item<int64_t>());
    out.answers.push_back(tokenizer.decode(answer, /*skip_special_tokens=*/true));
    ids.insert(ids.end(), answer.begin(), answer.end());
    out.ids.push_back(std::move(ids));
  }
  std::cerr << "\n";
  return out;
}

// The reward model's score of each prompt + answer (the value at the answer's last token, as PPO rewards it).
std::vector<double> scores(RewardModel& reward_model, const std::vector<std::vector<int64_t>>& sequences) {
  at::NoGradGuard no_grad;
  std::vector<double> out;
  for (const auto& ids : sequences) {
    auto input = at::tensor(ids, at::kLong).unsqueeze(0);
    auto values = reward_model.values(input, at::ones_like(input)).to(at::kFloat);
    out.push_back(values[0][input.size(1) - 1].item<double>());
  }
  return out;
}

int eval_prompts(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("baseline", po::value<std::string>()->required(), "the model before fine-tuning")(
      "model", po::value<std::string>()->required(), "the fine-tuned model")(
      "prompts", po::value<std::string>(), "prompts: JSONL (prompt field) or one per line; default: prompt_eval.py's")(
      "reward-model", po::value<std::string>(), "a reward stage's final/ folder to score both answers with");
  options.add(sampling_flags(100));
  auto vm = parse_flags("eval prompts", options, {}, args,
                        "--baseline DIR --model DIR [--prompts FILE] [--reward-model RM_DIR] [sampling flags]");
  if (!vm) return 0;
  (void)dtype_flag(*vm);
  // Every folder and file is checked before the first model loads.
  const auto baseline = resolve_model_flag((*vm)["baseline"].as<std::string>(), "--baseline");
  const auto finetuned = resolve_model_flag((*vm)["model"].as<std::string>(), "--model");
  const auto baseline_tokenizer = load_tokenizer(baseline, "--baseline");
  const auto finetuned_tokenizer = load_tokenizer(finetuned, "--model");
  std::optional<fs::path> rm_dir;
  if (vm->count("reward-model")) {
    rm_dir = resolve_model_flag((*vm)["reward-model"].as<std::string>(), "--reward-model");
    if (!fs::exists(*rm_dir / "value_head.safetensors"))
      throw CommandError(fmt::format("--reward-model {}: not a reward model: no value_head.safetensors",
                                     rm_dir->string()));
  }
  const auto prompts = vm->count("prompts") ? read_prompts((*vm)["prompts"].as<std::string>()) : kDeepSpeedChatPrompts;

  PluginRegistry registry;
  registry.discover(PluginRegistry::search_paths({}));
  auto before = greedy_answers(registry, baseline, *baseline_tokenizer, prompts, *vm, "--baseline");
  auto after = greedy_answers(registry, finetuned, *finetuned_tokenizer, prompts, *vm, "--model");
  std::vector<double> before_scores, after_scores;
  if (rm_dir) {
    auto reward_model = load_reward_model(registry, *rm_dir, at::kFloat, "--reward-model");
    before_scores = scores(*reward_model, before.ids);
    after_scores = scores(*reward_model, after.ids);
  }
  auto score_text = [&](const std::vector<double>& s, size_t i) {
    return s.empty() ? std::string() : fmt::format(" (reward {:.3f})", s[i]);
  };
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::cout << fmt::format("==========prompt {}=========\n{}\n", i + 1, prompts[i])
              << fmt::format("==========Baseline: Greedy========={}\n{}\n", score_text(before_scores, i),
                             before.answers[i])
              << fmt::format("==========finetune: Greedy========={}\n{}\n\n", score_text(after_scores, i),
                             after.answers[i]);
  }
  if (rm_dir) {
    auto mean = [](const std::vector<double>& s) { return std::accumulate(s.begin(), s.end(), 0.0) / s.size(); };
    std::cout << fmt::format("mean reward: baseline {:.4f}, finetune {:.4f}\n", mean(before_scores),
                             mean(after_scores));
  }
  return 0;
}

int eval(const std::vector<std::string>& args) {
  const std::string usage = "usage: dschat eval reward --model RM_DIR --data FILE\n"
                            "       dschat eval prompts --baseline DIR --model DIR [--prompts FILE] [--reward-model RM_DIR]";
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << usage << "\n";
    return args.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (args[0] == "reward") return run_guarded("eval reward", [&] { return eval_reward(rest); });
  if (args[0] == "prompts") return run_guarded("eval prompts", [&] { return eval_prompts(rest); });
  std::cerr << "dschat eval: unknown evaluation '" << args[0] << "'\n" << usage << "\n";
  return 2;
}

const bool registered = [] {
  extra_commands()["eval"] = eval;
  return true;
}();

}  // namespace
}  // namespace dschat
