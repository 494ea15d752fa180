// `dschat generate`: a quick look at what any HF model folder says, through the same plugins a pipeline uses.
#include <iostream>

#include <ATen/ATen.h>

#include "command_support.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/tokenizer.h"

namespace po = boost::program_options;

namespace dschat {
namespace {

constexpr const char* kSynopsis =
    "--model DIR --prompt TEXT [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K] "
    "[--seed S] [--dtype fp32|bf16] [--generation PLUGIN]";

int generate(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("model", po::value<std::string>()->required(),
                        "HF model folder (config.json, safetensors, tokenizer) or Hub id org/name[@revision]")(
      "prompt", po::value<std::string>()->required(), "text to continue");
  options.add(sampling_flags(64));
  auto vm = parse_flags("generate", options, {}, args, kSynopsis);
  if (!vm) return 0;
  const auto dtype = dtype_flag(*vm);
  const auto dir = resolve_model_flag((*vm)["model"].as<std::string>(), "--model");
  auto tokenizer = load_tokenizer(dir, "--model");
  PluginRegistry registry;
  registry.discover(PluginRegistry::search_paths({}));
  auto generator = make_generator(registry, *vm);
  auto model = load_causal_lm(registry, dir, dtype, "--model", device_flag(*vm));

  const std::string text = (*vm)["prompt"].as<std::string>();
  std::vector<int64_t> ids = tokenizer->encode(text);
  if (ids.empty()) throw CommandError("the prompt encodes to no tokens");
  auto prompt = at::tensor(ids, at::kLong).unsqueeze(0);
  GenerationResult result = generator->generate(*model, prompt, at::ones_like(prompt),
                                                sampling_for(*generator, *tokenizer, *vm, dir));

  auto answer = result.sequences[0].slice(0, result.prompt_length);
  auto answer_mask = result.answer_mask[0];
  std::vector<int64_t> answer_ids;
  for (int64_t t = 0; t < answer.size(0); ++t)
    if (answer_mask[t].item<int64_t>()) answer_ids.push_back(answer[t].item<int64_t>());
  std::cout << text << tokenizer->decode(answer_ids, /*skip_special_tokens=*/true) << "\n";
  return 0;
}

const bool registered = register_guarded_command("generate", generate);

}  // namespace
}  // namespace dschat
