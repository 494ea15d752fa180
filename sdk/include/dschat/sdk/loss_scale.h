#pragma once
// fp16 training's dynamic loss scale, DeepSpeed's DynamicLossScaler as DeepSpeed-Chat configures it: the loss is
// multiplied by the scale before backward so that small gradients survive fp16; a step whose gradients overflowed
// is skipped and the scale halved (never below min_loss_scale); after loss_scale_window good steps in a row it
// doubles. One implementation for every engine, so the single, ddp and zero strategies scale alike.
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "dschat/sdk/export.h"

namespace dschat {

struct OptimizerOptions;
class ConfigTable;

// A stage's fp16 keys into `options`: initial_loss_scale (65536), loss_scale_window (100), min_loss_scale (1),
// DeepSpeed's names and DeepSpeed-Chat's values. They matter for fp16 models only.
DSCHAT_SDK_API void read_loss_scale_options(const ConfigTable& table, OptimizerOptions& options);

class DSCHAT_SDK_API DynamicLossScale {
 public:
  DynamicLossScale() = default;  // disabled (fp32 / bf16): the scale stays 1
  DynamicLossScale(bool enabled, const OptimizerOptions& options);

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  // At each accumulation boundary this engine reached on its own: the update was applied, or its gradients
  // overflowed. A step skipped because a partner engine overflowed (StepOptions::skip) calls neither.
  void applied();
  void overflowed();

  // {"loss_scale", "good_steps"} for a checkpoint's engine.json; restore() reads them (absent keys: unchanged).
  void save_to(nlohmann::json& state) const;
  void restore_from(const nlohmann::json& state);

 private:
  bool enabled_ = false;
  double scale_ = 1.0, min_scale_ = 1.0;
  int64_t window_ = 100, good_steps_ = 0;
};

}  // namespace dschat
