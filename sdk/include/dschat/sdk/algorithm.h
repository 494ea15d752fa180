#pragma once
// Kind "algorithm": runs one stage of the pipeline (sft, reward, ppo, ...).
#include <filesystem>
#include <map>
#include <memory>
#include <string>

namespace dschat {

// What the host hands a running stage. Implemented by the host; grows with the algorithms that need it.
class StageContext {
 public:
  virtual ~StageContext() = default;
  virtual const std::string& stage_name() const = 0;
  virtual const std::filesystem::path& stage_dir() const = 0;  // where the stage writes its outputs
  // The HF model folder that a role resolves to: a models.* entry or an earlier stage's output.
  virtual std::filesystem::path model_dir(const std::string& role) const = 0;
  virtual uint64_t seed() const = 0;
};

class Algorithm {
 public:
  static constexpr const char* kind = "algorithm";
  static constexpr int interface_version = 1;
  virtual ~Algorithm() = default;

  // Model roles this stage reads and what each refers to ("actor" -> "sft", "model" -> "base"), so the host
  // can check references before any work starts and order stages.
  virtual std::map<std::string, std::string> model_roles() const = 0;
  virtual void run(StageContext& context) = 0;
};

}  // namespace dschat
