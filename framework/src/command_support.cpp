#include "command_support.h"

#include "dschat/sdk/device.h"

#include <algorithm>
#include <fstream>
#include <iostream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/chat_template.h"
#include "dschat/framework/cli.h"
#include "dschat/framework/hub.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/config.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/tokenizer.h"

namespace po = boost::program_options;

namespace dschat {

std::optional<po::variables_map> parse_flags(const std::string& command, const po::options_description& options,
                                             const po::positional_options_description& positional,
                                             const std::vector<std::string>& args, const std::string& synopsis) {
  po::options_description all;
  all.add(options).add_options()("help,h", "show this help");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: dschat " << command << " " << synopsis << "\n\n" << all << "\n";
      return std::nullopt;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw CommandError(fmt::format("dschat {}: {}\nusage: dschat {} {}", command, e.what(), command, synopsis));
  }
  return vm;
}

int run_guarded(const std::string& command, const std::function<int()>& body) {
  auto report = [&](const std::exception& e) {
    const std::string what = e.what();
    // parse_flags' messages already start with "dschat COMMAND:".
    std::cerr << (what.starts_with("dschat ") ? what : fmt::format("dschat {}: {}", command, what)) << "\n";
    return 2;
  };
  try {
    return body();
  } catch (const CommandError& e) {
    return report(e);
  } catch (const ChatTemplateError& e) {
    return report(e);
  } catch (const ConfigError& e) {
    return report(e);
  } catch (const PluginError& e) {
    return report(e);
  } catch (const TokenizerError& e) {
    return report(e);
  }
}

bool register_guarded_command(const std::string& command, int (*body)(const std::vector<std::string>& args)) {
  extra_commands()[command] = [command, body](const std::vector<std::string>& args) {
    return run_guarded(command, [&] { return body(args); });
  };
  return true;
}

std::filesystem::path resolve_model_flag(const std::string& value, const std::string& flag) {
  try {
    return resolve_model(value);
  } catch (const HubError& e) {
    throw CommandError(fmt::format("{}: {}", flag, e.what()));
  }
}

std::shared_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir, const std::string& flag) {
  try {
    return Tokenizer::from_dir(dir);
  } catch (const TokenizerError& e) {
    throw CommandError(fmt::format("{} {}: no usable tokenizer: {}", flag, dir.string(), e.what()));
  }
}

std::shared_ptr<CausalLM> load_causal_lm(PluginRegistry& registry, const std::filesystem::path& dir,
                                         at::ScalarType dtype, const std::string& flag, c10::Device device) {
  std::string model_type;
  try {
    model_type = model_type_of(read_hf_config(dir), dir);
  } catch (const std::exception& e) {
    throw CommandError(fmt::format("{} {}: {}", flag, dir.string(), e.what()));
  }
  auto no_options = ConfigDocument::parse_string("", "<" + flag + ">", ".");
  auto family = registry.create<ModelFamily>(model_type, no_options->root());
  ModelOptions options;
  options.dtype = dtype;
  options.device = device;
  auto model = family->from_pretrained(dir, options);
  model->eval();
  return model;
}

std::shared_ptr<RewardModel> load_reward_model(PluginRegistry& registry, const std::filesystem::path& dir,
                                               at::ScalarType dtype, const std::string& flag, c10::Device device) {
  if (!std::filesystem::exists(dir / "value_head.safetensors"))
    throw CommandError(fmt::format(
        "{} {}: not a reward model: no value_head.safetensors (a reward stage's final/ folder has one; "
        "a causal LM folder does not)",
        flag, dir.string()));
  auto reward_model = std::make_shared<RewardModel>(load_causal_lm(registry, dir, dtype, flag));
  load_value_head(*reward_model, dir);
  reward_model->to(device);
  reward_model->eval();
  return reward_model;
}

po::options_description sampling_flags(int64_t default_max_new_tokens) {
  po::options_description flags("sampling");
  flags.add_options()("max-new-tokens", po::value<int64_t>()->default_value(default_max_new_tokens),
                      "answer length limit")("greedy", "pick the most likely token each step")(
      "temperature", po::value<double>()->default_value(1.0), "sampling temperature")(
      "top-p", po::value<double>()->default_value(1.0), "nucleus sampling mass (1 disables)")(
      "top-k", po::value<int64_t>()->default_value(0), "sample among the k most likely (0 disables)")(
      "seed", po::value<uint64_t>()->default_value(1234), "sampling seed")(
      "dtype", po::value<std::string>()->default_value("fp32"), "fp32 or bf16")(
      "device", po::value<std::string>()->default_value("auto"), "auto, cpu, cuda or cuda:N")(
      "generation", po::value<std::string>()->default_value("kv-cache"), "generation plugin");
  return flags;
}

at::ScalarType dtype_flag(const po::variables_map& vm) {
  const auto name = vm["dtype"].as<std::string>();
  if (name == "fp32") return at::kFloat;
  if (name == "bf16") return at::kBFloat16;
  throw CommandError("--dtype must be fp32 or bf16, not " + name);
}

c10::Device device_flag(const po::variables_map& vm) {
  if (!vm.count("device")) return c10::kCPU;
  try {
    return resolve_device(vm["device"].as<std::string>());
  } catch (const std::invalid_argument& e) {
    throw CommandError(std::string("--device: ") + e.what());
  }
}

std::shared_ptr<Generator> make_generator(PluginRegistry& registry, const po::variables_map& vm) {
  // The plugin reads its options from TOML like in a pipeline, so its checks apply here too.
  const std::string toml =
      fmt::format("max_new_tokens = {}\ndo_sample = {}\ntemperature = {}\ntop_p = {}\ntop_k = {}\nseed = {}\n",
                  vm["max-new-tokens"].as<int64_t>(), vm.count("greedy") ? "false" : "true",
                  vm["temperature"].as<double>(), vm["top-p"].as<double>(), vm["top-k"].as<int64_t>(),
                  vm["seed"].as<uint64_t>());
  auto options = ConfigDocument::parse_string(toml, "<sampling flags>", ".");
  return registry.create<Generator>(vm["generation"].as<std::string>(), options->root());
}

SamplingOptions sampling_for(const Generator& generator, const Tokenizer& tokenizer, const po::variables_map& vm,
                             const std::filesystem::path& model_dir) {
  SamplingOptions sampling = generator.defaults();
  if (auto eos = tokenizer.eos_id()) sampling.eos_token_ids = {*eos};
  std::ifstream in(model_dir / "generation_config.json");
  if (in) {
    auto config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (config.is_object() && config.contains("eos_token_id")) {
      auto ids = config["eos_token_id"];
      if (!ids.is_array()) ids = nlohmann::json::array({ids});
      for (const auto& id : ids)
        if (id.is_number_integer() && std::find(sampling.eos_token_ids.begin(), sampling.eos_token_ids.end(),
                                                id.get<int64_t>()) == sampling.eos_token_ids.end())
          sampling.eos_token_ids.push_back(id.get<int64_t>());
    }
  }
  sampling.pad_token_id = tokenizer.pad_id().value_or(sampling.eos_token_ids.empty() ? 0 : sampling.eos_token_ids[0]);
  sampling.seed = vm["seed"].as<uint64_t>();
  return sampling;
}

}  // namespace dschat
