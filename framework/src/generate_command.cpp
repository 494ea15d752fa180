// `dschat generate`: a quick look at what any HF model folder says, through the same plugins a pipeline uses.
#include <iostream>

#include <ATen/ATen.h>
#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>
#include <fmt/format.h>

#include "dschat/framework/cli.h"
#include "dschat/framework/hub.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/tokenizer.h"

namespace po = boost::program_options;

namespace dschat {
namespace {

constexpr const char* kSynopsis =
    "--model DIR --prompt TEXT [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K] "
    "[--seed S] [--dtype fp32|bf16] [--generation PLUGIN]";

int generate_command(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("model", po::value<std::string>()->required(), "HF model folder (config.json, safetensors, tokenizer) or Hub id org/name[@revision]")(
      "prompt", po::value<std::string>()->required(), "text to continue")(
      "max-new-tokens", po::value<int64_t>()->default_value(64), "answer length limit")(
      "greedy", "pick the most likely token each step")(
      "temperature", po::value<double>()->default_value(1.0), "sampling temperature")(
      "top-p", po::value<double>()->default_value(1.0), "nucleus sampling mass (1 disables)")(
      "top-k", po::value<int64_t>()->default_value(0), "sample among the k most likely (0 disables)")(
      "seed", po::value<uint64_t>()->default_value(1234), "sampling seed")(
      "dtype", po::value<std::string>()->default_value("fp32"), "fp32 or bf16")(
      "generation", po::value<std::string>()->default_value("kv-cache"), "generation plugin")(
      "help,h", "show this help");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(options).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: dschat generate " << kSynopsis << "\n\n" << options << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "dschat generate: " << e.what() << "\nusage: dschat generate " << kSynopsis << "\n";
    return 2;
  }
  const std::string dtype_name = vm["dtype"].as<std::string>();
  if (dtype_name != "fp32" && dtype_name != "bf16") {
    std::cerr << "dschat generate: --dtype must be fp32 or bf16, not " << dtype_name << "\n";
    return 2;
  }

  std::filesystem::path dir;
  try {
    dir = resolve_model(vm["model"].as<std::string>());
  } catch (const HubError& e) {
    std::cerr << "dschat generate: --model: " << e.what() << "\n";
    return 2;
  }
  PluginRegistry registry;
  registry.discover(PluginRegistry::search_paths({}));
  nlohmann::json hf_config = read_hf_config(dir);
  std::string model_type;
  try {
    model_type = model_type_of(hf_config, dir);
  } catch (const std::invalid_argument& e) {
    std::cerr << "dschat generate: " << e.what() << "\n";
    return 2;
  }
  auto no_options = ConfigDocument::parse_string("", "<generate>", ".");
  auto family = registry.create<ModelFamily>(model_type, no_options->root());
  ModelOptions model_options;
  model_options.dtype = dtype_name == "bf16" ? at::kBFloat16 : at::kFloat;
  auto model = family->from_pretrained(dir, model_options);
  model->eval();
  auto tokenizer = Tokenizer::from_dir(dir);

  // The generation plugin reads its options from TOML like in a pipeline, so its checks apply here too.
  std::string toml = fmt::format("max_new_tokens = {}\ndo_sample = {}\ntemperature = {}\ntop_p = {}\ntop_k = {}\nseed = {}\n",
                                 vm["max-new-tokens"].as<int64_t>(), vm.count("greedy") ? "false" : "true",
                                 vm["temperature"].as<double>(), vm["top-p"].as<double>(), vm["top-k"].as<int64_t>(),
                                 vm["seed"].as<uint64_t>());
  auto generation_options = ConfigDocument::parse_string(toml, "<generate options>", ".");
  auto generator = registry.create<Generator>(vm["generation"].as<std::string>(), generation_options->root());

  std::vector<int64_t> ids = tokenizer->encode(vm["prompt"].as<std::string>());
  if (ids.empty()) {
    std::cerr << "dschat generate: the prompt encodes to no tokens\n";
    return 2;
  }
  auto prompt = at::tensor(ids, at::kLong).unsqueeze(0);
  auto mask = at::ones_like(prompt);
  SamplingOptions sampling = generator->defaults();
  if (auto eos = tokenizer->eos_id()) sampling.eos_token_ids = {*eos};
  sampling.pad_token_id = tokenizer->pad_id().value_or(sampling.eos_token_ids.empty() ? 0 : sampling.eos_token_ids[0]);
  sampling.seed = vm["seed"].as<uint64_t>();
  GenerationResult result = generator->generate(*model, prompt, mask, sampling);

  auto answer = result.sequences[0].slice(0, result.prompt_length);
  auto answer_mask = result.answer_mask[0];
  std::vector<int64_t> answer_ids;
  for (int64_t t = 0; t < answer.size(0); ++t)
    if (answer_mask[t].item<int64_t>()) answer_ids.push_back(answer[t].item<int64_t>());
  std::cout << vm["prompt"].as<std::string>() << tokenizer->decode(answer_ids, /*skip_special_tokens=*/true) << "\n";
  return 0;
}

const bool registered = [] {
  extra_commands()["generate"] = generate_command;
  return true;
}();

}  // namespace
}  // namespace dschat
