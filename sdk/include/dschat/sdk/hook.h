#pragma once
// Kind "hook": called around training steps (EMA of the actor, ...).
#include <cstdint>
#include <filesystem>

#include <torch/nn/module.h>

namespace dschat {

struct HookStepInfo {
  int64_t step = 0;  // optimizer steps taken so far in the stage
};

class Hook {
 public:
  static constexpr const char* kind = "hook";
  static constexpr int interface_version = 1;
  virtual ~Hook() = default;

  virtual void on_train_begin(torch::nn::Module& /*model*/) {}
  virtual void after_optimizer_step(torch::nn::Module& /*model*/, const HookStepInfo& /*info*/) {}
  // Writes whatever the hook keeps (e.g. the EMA weights) into `stage_dir`.
  virtual void on_train_end(torch::nn::Module& /*model*/, const std::filesystem::path& /*stage_dir*/) {}
};

}  // namespace dschat
