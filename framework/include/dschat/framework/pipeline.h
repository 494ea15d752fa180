#pragma once
// A pipeline file, parsed and validated in full (every key, file and plugin name) before any work starts.
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dschat/framework/data.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

struct ModelSpec {
  std::string name;                // key under [models]
  std::filesystem::path path;      // HF folder: config.json, *.safetensors, tokenizer.json
  std::string dtype;               // fp32 | bf16 | fp16
  std::string init;                // pretrained | random (weights drawn from the config, for the quickstart)
  nlohmann::json hf_config;
  std::shared_ptr<ModelFamily> family;  // the model plugin for hf_config["model_type"]

  at::ScalarType scalar_type() const;  // of dtype
};

struct StrategySpec {
  std::string plugin;
  std::shared_ptr<Strategy> strategy;
};

struct StageSpec {
  std::string name;
  std::string algorithm_name;
  std::shared_ptr<Algorithm> algorithm;
  std::map<std::string, std::string> roles;  // role -> models.* entry or earlier stage
  StrategySpec strategy;                     // the stage's override, else the pipeline default
  std::shared_ptr<Generator> generator;      // stage.generation = { plugin = ..., ... }
  std::vector<std::shared_ptr<Hook>> hooks;  // stage.hooks = [{ plugin = ..., ... }]
  std::vector<WeightedReward> rewards;       // stage.rewards = [{ plugin = ..., weight = ..., ... }]
};

// [distributed]: how the ranks a launcher started talk (DESIGN §6).
struct DistributedSpec {
  std::string backend = "auto";  // auto | gloo | nccl
  double timeout_s = 300.0;      // rendezvous and each collective; a dead rank is noticed within it
};

struct Pipeline {
  std::shared_ptr<ConfigDocument> document;
  std::string name;
  std::filesystem::path output_dir;
  uint64_t seed = 1234;
  std::string device = "auto";  // [pipeline].device: auto | cpu | cuda | cuda:N (dschat/sdk/device.h)
  std::vector<std::filesystem::path> plugin_paths;
  std::map<std::string, ModelSpec> models;
  StrategySpec strategy;
  DataSpec data;
  DistributedSpec distributed;
  std::vector<StageSpec> stages;

  std::string describe() const;  // the plan --dry-run prints
};

// The [models.*] entry a role's reference descends from: the entry itself, or the model an earlier stage trained
// (its "model" or "actor" role, followed back). std::invalid_argument when it leads nowhere.
const ModelSpec& root_model(const Pipeline& pipeline, const std::string& reference);

// The model `spec` describes, built in its dtype with weights allocated and never written (no page touched):
// what it holds can be counted and its config checked without the cost of the weights.
std::shared_ptr<CausalLM> build_untouched(const ModelSpec& spec);

// Parses `file`, applies `overrides` (key.path=value), discovers plugins (the pipeline's [plugins].paths first)
// into `registry`, and validates everything. Throws ConfigError (exit 2) or PluginError.
Pipeline load_pipeline(const std::filesystem::path& file, const std::vector<std::string>& overrides,
                       PluginRegistry& registry);

}  // namespace dschat
