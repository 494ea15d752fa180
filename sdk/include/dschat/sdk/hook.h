#pragma once
// Kind "hook": called around training steps (EMA of the actor, ...).
//
// The algorithm calls, in order: set_model_info (once, when it knows the model's family and tokenizer),
// on_train_begin, after_optimizer_step after every applied optimizer step, on_train_end.
#include <cstdint>
#include <filesystem>
#include <memory>

#include <torch/nn/module.h>

namespace dschat {

class ModelFamily;
class Tokenizer;

struct HookStepInfo {
  int64_t step = 0;  // optimizer steps taken so far in the stage
};

// What a hook needs to write a model the way the stage writes its own final model (an HF folder).
struct HookModelInfo {
  std::shared_ptr<const ModelFamily> family;    // family of the trained model (export_hf); may be null
  std::shared_ptr<const Tokenizer> tokenizer;   // saved beside exported weights; may be null
};

class Hook {
 public:
  static constexpr const char* kind = "hook";
  // 2: set_model_info added (source compatible: it has a default), which changes the vtable.
  // 3: save_state / load_state, so that a stage's checkpoints carry what hooks keep (the EMA).
  static constexpr int interface_version = 3;
  virtual ~Hook() = default;

  virtual void set_model_info(const HookModelInfo& /*info*/) {}
  virtual void on_train_begin(torch::nn::Module& /*model*/) {}
  virtual void after_optimizer_step(torch::nn::Module& /*model*/, const HookStepInfo& /*info*/) {}
  // Writes whatever the hook keeps (e.g. the EMA weights) into `stage_dir`.
  virtual void on_train_end(torch::nn::Module& /*model*/, const std::filesystem::path& /*stage_dir*/) {}
  // Checkpoints: what the hook keeps, written into / read back from `dir` (a folder it owns). load_state is
  // called after on_train_begin, when a stage resumes.
  virtual void save_state(const std::filesystem::path& /*dir*/) {}
  virtual void load_state(const std::filesystem::path& /*dir*/) {}
};

}  // namespace dschat
