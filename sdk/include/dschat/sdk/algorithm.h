#pragma once
// Kind "algorithm": runs one stage of the pipeline (sft, reward, ppo, ...).
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dschat/sdk/data.h"
#include "dschat/sdk/memory_plan.h"
#include "dschat/sdk/metrics.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/reward.h"

namespace dschat {

class Generator;
class Hook;
class Strategy;
class Tokenizer;

// A model a stage works on, resolved from its role: the family (plugin) that knows the architecture, the HF
// folder it comes from, and how to build it.
struct ModelHandle {
  std::filesystem::path dir;  // HF folder: a [models.*] path or an earlier stage's final/ folder
  std::shared_ptr<ModelFamily> family;
  nlohmann::json hf_config;
  ModelOptions options;  // dtype from the pipeline
  bool random_init = false;  // [models.X] init = "random": build from config.json, load no weights
};

// What the host hands a running stage. Implemented by the host.
class StageContext {
 public:
  virtual ~StageContext() = default;
  virtual const std::string& stage_name() const = 0;
  virtual const std::filesystem::path& stage_dir() const = 0;  // where the stage writes its outputs
  virtual uint64_t seed() const = 0;

  // The HF model folder that a role resolves to: a models.* entry or an earlier stage's output.
  virtual std::filesystem::path model_dir(const std::string& role) const = 0;
  virtual ModelHandle model(const std::string& role) const = 0;
  // Loads the role's model (weights from its folder unless random_init) with the handle's options.
  virtual std::shared_ptr<CausalLM> load_model(const std::string& role) const = 0;
  virtual std::shared_ptr<Tokenizer> tokenizer(const std::string& role) const = 0;

  virtual const DataSource& data() const = 0;
  virtual MetricsSink& metrics() = 0;
  virtual Progress& progress() = 0;

  virtual Strategy& strategy() = 0;
  virtual Generator* generator() = 0;  // stage.generation, or nullptr
  virtual const std::vector<std::shared_ptr<Hook>>& hooks() = 0;
  // stage.rewards = [{ plugin = ..., weight = ... }, ...] in order; empty when the stage lists none.
  virtual const std::vector<WeightedReward>& rewards() = 0;
};

// What a stage reads of the pipeline's [data], so that validate can tell a stage it would find nothing (a reward
// stage given only single-answer data, a share of the split set to 0) before any stage runs.
struct DataNeeds {
  std::optional<Phase> phase;  // the share of the split the stage trains on; unset: the stage reads no [data]
  bool pairs = false;          // it needs chosen/rejected pairs, not single answers
};

class Algorithm {
 public:
  static constexpr const char* kind = "algorithm";
  static constexpr int interface_version = 4;  // 2: data_needs(); 3: StageContext::rewards(); 4: memory_needs()
  virtual ~Algorithm() = default;

  // Model roles this stage reads and what each refers to ("actor" -> "sft", "model" -> "base"), so the host
  // can check references before any work starts and order stages.
  virtual std::map<std::string, std::string> model_roles() const = 0;
  virtual DataNeeds data_needs() const { return {}; }
  // The models this stage holds and the batches each phase runs, for the memory planner (memory_plan.h). The
  // default describes nothing: `plan` says so and `run` checks nothing for the stage.
  virtual MemoryNeeds memory_needs(const MemoryNeedsContext& context) const {
    (void)context;
    return {};
  }
  // Runs the stage. The final model goes to stage_dir()/final as an HF folder; the host marks it complete
  // (and reuses it on the next run) only after run() returns.
  virtual void run(StageContext& context) = 0;
};

}  // namespace dschat
