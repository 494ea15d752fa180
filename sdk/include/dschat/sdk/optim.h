#pragma once
// SDK library code behind the strategies: DeepSpeed-Chat's parameter groups, HF's warmup schedules, activation
// checkpointing of one block, the single-process engine (which the DDP / ZeRO plugins extend), and the
// training options every algorithm reads the same way.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "dschat/sdk/config.h"
#include "dschat/sdk/export.h"
#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

// ---- schedules ---------------------------------------------------------------------------------------------
// The factor HF's get_scheduler applies to the base lr after `step` scheduler steps (the lr of optimizer step
// `step`, 0-based): warmup step / warmup, then linear decay to 0 or a half cosine to 0 at total_steps.
DSCHAT_SDK_API double lr_multiplier(const std::string& scheduler, int64_t step, int64_t warmup_steps,
                                    int64_t total_steps);

// ---- parameter groups (get_optimizer_grouped_parameters) ---------------------------------------------------
enum class ParamGroupKind { decay = 0, lora = 1, no_decay = 2 };
DSCHAT_SDK_API const char* to_string(ParamGroupKind kind);
// By name: "lora_right_weight"/"lora_left_weight" -> lora; names containing (lower-cased) "bias", "layer_norm",
// "layernorm", "norm.weight" or "ln_" -> no_decay (DeepSpeed-Chat's list plus "ln_" for GPT-style ln_1/ln_f);
// everything else -> decay.
DSCHAT_SDK_API ParamGroupKind param_group_of(const std::string& name);

struct NamedParam {
  std::string name;
  at::Tensor param;
  ParamGroupKind group;
};
// The parameters of `module` that require grad, in named_parameters() order, with their groups.
DSCHAT_SDK_API std::vector<NamedParam> trainable_parameters(const torch::nn::Module& module);

// ---- LoRA as DeepSpeed-Chat applies it ---------------------------------------------------------------------
// Adds adapters to every LoraLinear whose path contains `module_name` ("" = any) and whose own name is in
// `targets`. Returns the count; zero is an error naming both filters.
DSCHAT_SDK_API size_t enable_lora_where(torch::nn::Module& module, const std::string& module_name,
                                        const std::vector<std::string>& targets, const LoraOptions& options);
// only_optimize_lora: every parameter that is not a LoRA matrix stops requiring grad, except names containing
// one of `keep` (e.g. "v_head").
DSCHAT_SDK_API void freeze_all_but_lora(torch::nn::Module& module, const std::vector<std::string>& keep = {});

// ---- activation checkpointing ------------------------------------------------------------------------------
// Runs `block` on `hidden` without keeping activations and recomputes it in backward with the RNG state of the
// forward pass restored (dropout draws the same mask). Gradients reach the block's parameters and `hidden`.
DSCHAT_SDK_API at::Tensor checkpointed(std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& hidden);

// ---- the single-process engine -----------------------------------------------------------------------------
// AdamW over fp32 parameters; a bf16 / fp16 model trains on fp32 master copies (as DeepSpeed's bf16 and fp16
// optimizers do), the fp16 one with a dynamic loss scale.
//
// Mixed precision follows the model's dtype ([models.X] dtype = "bf16") rather than at::autocast: LibTorch 2.11's
// CPU autocast works, but it keeps fp32 weights and re-casts them to bf16 in every forward (and again in the
// recomputation of checkpointed blocks), while bf16 weights halve parameter memory and match what DeepSpeed-Chat
// runs with --dtype bf16. The checkpointing Function still saves and restores the autocast state, so a caller
// that enables autocast itself gets the same casts in the recomputation.
//
// `sync` is for a model split over ranks (the tp strategy): at each boundary, once the fp32 gradients are
// unscaled and before they are clipped, `average` (when set) averages them over the data-parallel replicas, and
// `squared_norm` (when set) gives the squared norm of the whole model's gradient from this rank's part, so that
// every rank clips by the same factor.
struct GradientSync {
  std::function<void(const std::vector<at::Tensor>& grads)> average;
  // `names` and `grads` in trainable_parameters() order, parameters without a gradient left out.
  std::function<double(const std::vector<std::string>& names, const std::vector<at::Tensor>& grads)> squared_norm;
};
DSCHAT_SDK_API std::unique_ptr<Engine> make_local_engine(std::shared_ptr<torch::nn::Module> module,
                                                         std::shared_ptr<CausalLM> lm, const OptimizerOptions& options,
                                                         at::Device device, std::string strategy_description,
                                                         GradientSync sync = {});

// ---- options every training algorithm reads ----------------------------------------------------------------
struct TrainDefaults {
  double learning_rate = 9.65e-6;
  double weight_decay = 0.0;
};
struct TrainOptions {
  std::string model_role_reference;  // `model` key
  int64_t epochs = 1;
  int64_t per_device_train_batch_size = 16;
  int64_t per_device_eval_batch_size = 16;
  int64_t max_steps = 0;        // 0: no cap
  int64_t eval_interval = 0;    // optimizer steps; 0: only at the start and the end
  int64_t eval_iters = 0;       // eval batches; 0: all
  int64_t checkpoint_interval = 0;  // optimizer steps; 0: no periodic checkpoints
  int64_t max_nonfinite_steps = 3;  // optimizer steps in a row skipped for NaN/inf before the stage stops
  int64_t lora_dim = 0;
  double lora_scaling = 1.0;
  std::string lora_module_name;
  std::vector<std::string> lora_targets;  // empty: the family's lora_target_modules()
  bool only_optimize_lora = false;
  std::optional<at::ScalarType> dtype;  // `dtype` = "fp32" | "bf16" | "fp16": overrides [models.X].dtype
  OptimizerOptions optimizer;
};
// Reads the shared keys: model, epochs, per_device_{train,eval}_batch_size, gradient_accumulation_steps,
// learning_rate, lora_learning_rate, weight_decay, lr_scheduler, num_warmup_steps, max_steps, eval_interval,
// eval_iters, checkpoint_interval, max_nonfinite_steps, lora_dim, lora_scaling, lora_module_name, lora_targets, only_optimize_lora,
// gradient_checkpointing, max_grad_norm, dtype.
DSCHAT_SDK_API TrainOptions read_train_options(const ConfigTable& table, const TrainDefaults& defaults);

// The memory needs (memory_plan.h) of a stage that trains one model on rows of seq_len tokens, padded to it as
// DeepSpeed-Chat pads: `sequences_per_row` per example (2 for chosen/rejected pairs), LM-head logits over every
// position unless the model is read through a value head; evaluation runs without a graph.
DSCHAT_SDK_API MemoryNeeds one_model_memory_needs(const TrainOptions& options, int64_t seq_len,
                                                  int64_t sequences_per_row, bool value_head);

}  // namespace dschat
