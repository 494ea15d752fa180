// `dschat consolidate`: a sharded ddp / zero checkpoint (shard-R-of-N.safetensors + manifest.json) back into one
// HF folder that transformers loads (for a reward model or critic: the reward stage's folder, value head and
// reward_model.json included). The manifest gives every parameter's unit, offset and shape in the flat
// layout, so the slices of any world size are put back together without the ranks that wrote them.
#include <iostream>
#include <map>

#include <ATen/ops/cat.h>
#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/cli.h"
#include "dschat/framework/hub.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/safetensors.h"
#include "dschat/sdk/tokenizer.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace dschat {
namespace {

constexpr const char* kSynopsis = "CHECKPOINT_DIR --like HF_DIR --out OUT_DIR [--dtype fp32|bf16]";

// Parameter name -> full fp32 tensor, from the slices of every shard.
std::map<std::string, at::Tensor> consolidate(const fs::path& checkpoint) {
  nlohmann::json manifest =
      read_json_object(checkpoint / "manifest.json", "(is this a ddp / zero checkpoint folder?)");
  const int partitions = manifest.at("partitions").get<int>();
  std::vector<std::shared_ptr<safetensors::File>> shards;
  for (int p = 0; p < partitions; ++p)
    shards.push_back(safetensors::File::open(checkpoint / fmt::format("shard-{}-of-{}.safetensors", p, partitions)));
  std::map<std::string, at::Tensor> params;
  for (const auto& unit : manifest.at("units")) {
    const std::string name = unit.at("name").get<std::string>();
    std::vector<at::Tensor> parts;
    for (auto& shard : shards) parts.push_back(shard->tensor(name + ".master"));
    at::Tensor flat = at::cat(parts);
    for (const auto& p : unit.at("params")) {
      const int64_t offset = p.at("offset").get<int64_t>(), numel = p.at("numel").get<int64_t>();
      if (offset + numel > flat.numel())
        throw std::runtime_error(fmt::format("{}: parameter {} ends at {} but unit {} holds {} elements",
                                             (checkpoint / "manifest.json").string(), p.at("name").get<std::string>(),
                                             offset + numel, name, flat.numel()));
      params[p.at("name").get<std::string>()] =
          flat.narrow(0, offset, numel).view(p.at("shape").get<std::vector<int64_t>>()).clone();
    }
  }
  if (fs::exists(checkpoint / "frozen.safetensors")) {
    auto frozen = safetensors::File::open(checkpoint / "frozen.safetensors");
    for (const auto& info : frozen->tensors()) params[info.name] = frozen->tensor(info).clone();
  }
  return params;
}

// How the reward stage scored: reward_model.json of the --like folder when it is a reward stage's output, else what
// the reward stage derives from the tokenizer (the SDK's reward_conventions).
nlohmann::json conventions_for(const fs::path& like, const Tokenizer* tokenizer) {
  if (fs::exists(like / "reward_model.json")) return read_json_object(like / "reward_model.json", "");
  if (tokenizer == nullptr)
    throw std::runtime_error(fmt::format("{} has neither reward_model.json nor a tokenizer to derive the pad token "
                                         "from", like.string()));
  return reward_conventions_json(reward_conventions(*tokenizer));
}

int consolidate_command(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("checkpoint", po::value<std::string>()->required(), "checkpoint folder (checkpoints/step-N)")(
      "like", po::value<std::string>()->required(), "HF folder (or Hub id) of the trained model (config.json, tokenizer)")(
      "out", po::value<std::string>()->required(), "where to write the HF folder")(
      "dtype", po::value<std::string>()->default_value("fp32"), "fp32 or bf16")("help,h", "show this help");
  po::positional_options_description positional;
  positional.add("checkpoint", 1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: dschat consolidate " << kSynopsis << "\n\n" << options << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "dschat consolidate: " << e.what() << "\nusage: dschat consolidate " << kSynopsis << "\n";
    return 2;
  }
  const std::string dtype = vm["dtype"].as<std::string>();
  if (dtype != "fp32" && dtype != "bf16") {
    std::cerr << "dschat consolidate: --dtype must be fp32 or bf16, not " << dtype << "\n";
    return 2;
  }
  const fs::path checkpoint = vm["checkpoint"].as<std::string>(), out = vm["out"].as<std::string>();
  fs::path like;
  try {
    like = resolve_model(vm["like"].as<std::string>());
  } catch (const HubError& e) {
    std::cerr << "dschat consolidate: --like: " << e.what() << "\n";
    return 2;
  }

  // engine.json is written last: without it the save was interrupted and some shards may be missing or stale.
  // (No manifest.json either: not a ddp/zero checkpoint at all, which consolidate() below says.)
  if (fs::exists(checkpoint / "manifest.json") && !fs::exists(checkpoint / "engine.json")) {
    std::cerr << fmt::format("dschat consolidate: {} is incomplete (no engine.json, which a save writes last): an "
                             "interrupted save; use an earlier step-N folder\n", checkpoint.string());
    return 1;
  }
  auto params = consolidate(checkpoint);
  PluginRegistry registry;
  registry.discover(PluginRegistry::search_paths({}));
  nlohmann::json hf_config = read_hf_config(like);
  auto no_options = ConfigDocument::parse_string("", "<consolidate>", ".");
  std::string model_type;
  try {
    model_type = model_type_of(hf_config, like);
  } catch (const std::invalid_argument& e) {
    std::cerr << "dschat consolidate: " << e.what() << "\n";
    return 2;
  }
  auto family = registry.create<ModelFamily>(model_type, no_options->root());
  std::shared_ptr<CausalLM> model = family->build(hf_config, {});
  // A reward model or critic checkpoint names its parameters as the RewardModel module does: the base model under
  // "rwtransformer." beside "v_head.weight". Filling that module writes the same folder the reward stage does.
  const bool reward_model = params.count("v_head.weight") != 0;
  std::shared_ptr<RewardModel> rm = reward_model ? std::make_shared<RewardModel>(model) : nullptr;
  torch::nn::Module& target = reward_model ? static_cast<torch::nn::Module&>(*rm) : *model;
  at::NoGradGuard no_grad;
  for (auto& item : target.named_parameters(true)) {
    auto it = params.find(item.key());
    if (it == params.end())
      throw std::runtime_error(fmt::format("{}: the checkpoint has no parameter '{}' of the {} {} built from {}",
                                           checkpoint.string(), item.key(), family->model_type(),
                                           reward_model ? "reward model" : "model", like.string()));
    if (it->second.sizes() != item.value().sizes())
      throw std::runtime_error(fmt::format("{}: parameter '{}' has shape {}, the model built from {} expects {}",
                                           checkpoint.string(), item.key(), c10::str(it->second.sizes()),
                                           (like / "config.json").string(), c10::str(item.value().sizes())));
    item.value().copy_(it->second);
  }
  std::shared_ptr<Tokenizer> tokenizer;
  if (fs::exists(like / "tokenizer.json") || fs::exists(like / "vocab.json")) tokenizer = Tokenizer::from_dir(like);
  if (reward_model) {
    if (dtype == "bf16") rm->to(at::kBFloat16);
    save_reward_model(*rm, *family, tokenizer.get(), out, conventions_for(like, tokenizer.get()));
  } else {
    ExportOptions export_options;
    if (dtype == "bf16") export_options.dtype = at::kBFloat16;
    family->export_hf(*model, out, export_options);
    if (tokenizer) tokenizer->save(out);
  }
  std::cout << fmt::format("consolidated {} ({} parameters) into {}\n", checkpoint.string(), params.size(),
                           out.string());
  return 0;
}

const bool registered = [] {
  extra_commands()["consolidate"] = consolidate_command;
  return true;
}();

}  // namespace
}  // namespace dschat
