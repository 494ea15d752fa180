#pragma once
// Kind "strategy": wraps a model and its optimizer into an engine (single process, DDP, ZeRO, TP).
//
// An algorithm asks the stage's strategy for one Engine per trainable model and then only talks to the engine:
//
//   auto engine = context.strategy().make_engine(module, lm, options);
//   for (micro-batches) {
//     auto out = engine->forward(ids, mask);          // embed -> blocks (wrapped by the strategy) -> head
//     engine->backward(loss);                          // loss / gradient_accumulation_steps (x loss scale)
//     auto step = engine->step();                      // optimizer step at accumulation boundaries only
//     (fp16 with two engines per micro-batch: ask gradients_overflowed() of both, then step({.skip = either}))
//   }
//
// The optimizer is DeepSpeed-Chat's: AdamW, betas (0.9, 0.95), three parameter groups (decay / no-decay /
// LoRA with its own lr), gradient clipping 1.0, HF's linear or cosine schedule with warmup. The reusable single
// process implementation is SDK library code (dschat/sdk/optim.h), so the DDP and ZeRO plugins build on it.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

#include "dschat/sdk/export.h"
#include "dschat/sdk/frozen_model.h"
#include "dschat/sdk/memory_plan.h"
#include "dschat/sdk/model.h"

namespace dschat {

class ConfigTable;

// A strategy's `device` option: "auto" (the default: the pipeline's `device`, see device.h), "cpu", "cuda" (this
// rank's LOCAL_RANK GPU) or "cuda:N". read_device_option checks it against this build and machine (a ConfigError at
// the option otherwise); place_on resolves it for this rank when the engine is made.
DSCHAT_SDK_API std::string read_device_option(const ConfigTable& options);
DSCHAT_SDK_API at::Device place_on(const std::string& device_option);

struct OptimizerOptions {
  double learning_rate = 1e-3;       // decay and no-decay groups
  double lora_learning_rate = 5e-4;  // LoRA group (lora_right_weight / lora_left_weight)
  double weight_decay = 0.0;         // decay and LoRA groups; no-decay gets 0
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  std::string lr_scheduler = "cosine";  // "cosine" | "linear" | "constant"
  int64_t num_warmup_steps = 0;
  int64_t total_steps = 0;  // optimizer steps the schedule spans
  int64_t gradient_accumulation_steps = 1;
  bool gradient_checkpointing = false;  // recompute each block in backward
  // fp16 models: dynamic loss scale (DeepSpeed's defaults); overflowing steps are skipped.
  double initial_loss_scale = 65536.0;
  int64_t loss_scale_window = 100;
  double min_loss_scale = 1.0;
};

// What one engine->step() did.
struct StepResult {
  bool boundary = false;  // an accumulation boundary: the optimizer was due
  bool applied = false;   // the optimizer stepped (false at a boundary: skipped, weights untouched)
  bool nonfinite = false;  // skipped because the gradients held NaN or inf (not an fp16 loss-scale overflow)
  double grad_norm = 0.0;  // total norm before clipping (at a boundary)
  double lr = 0.0;         // the lr the step used (first group)
  double loss_scale = 1.0;
  bool overflow = false;  // fp16: skipped for an overflow, this engine's (its loss scale halved) or a partner's
};

// What Engine::forward returns.
struct ForwardOptions {
  bool return_hidden = false;  // the final hidden states, all T positions (a value head reads them)
  bool return_logits = true;
  // Logits only for positions >= logits_from ([B, T - logits_from, V]): PPO reads the answer positions only, and
  // the LM head over the prompt would cost B x P x V for nothing.
  int64_t logits_from = 0;
};

// What step() is told beyond its own checks.
struct StepOptions {
  // Skip this boundary's update as if it had overflowed, leaving this engine's loss scale alone: another engine
  // trained on the same micro-batch overflowed (PPO's actor and critic skip together, see gradients_overflowed).
  bool skip = false;
};

// What one rank holds for a trained model, in bytes (DESIGN §6 memory accounting). ZeRO divides optimizer
// states (stage 1), then gradients (stage 2), then parameters (stage 3) by the number of ranks.
struct MemoryFootprint {
  int64_t parameter_bytes = 0;  // the model's weights (a ZeRO-3 rank: its shard)
  int64_t gradient_bytes = 0;   // gradients kept between backward and step
  int64_t optimizer_bytes = 0;  // fp32 master weights (when kept apart from the model's) + Adam's two moments
};

// The engine a strategy makes for one trainable model.
class DSCHAT_SDK_API Engine {
 public:
  virtual ~Engine() = default;
  virtual torch::nn::Module& module() = 0;  // everything trained (e.g. the LM and a value head)
  virtual CausalLM& model() = 0;            // the causal LM inside module()
  virtual at::Device device() const = 0;
  virtual std::string describe() const = 0;  // "single process, cpu, bf16 + fp32 master weights"

  // The LM's forward through the strategy's wrapped blocks (activation checkpointing, shard gathering).
  // input_ids / attention_mask [B, T] (moved to device()); what comes back is chosen by ForwardOptions.
  virtual CausalLMOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                 const ForwardOptions& options) = 0;
  CausalLMOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) {
    return forward(input_ids, attention_mask, ForwardOptions{});
  }
  // loss / gradient_accumulation_steps (times the loss scale for fp16) -> backward.
  virtual void backward(const at::Tensor& loss) = 0;
  // fp16 (dynamic loss scale): whether the gradients accumulated for the coming boundary overflowed, the same
  // answer on every rank; false for fp32 / bf16 and between boundaries. Collective under ddp / zero (every rank
  // asks at the same point). An algorithm that steps several engines per micro-batch asks each of them first and
  // passes StepOptions{.skip = any} to every step(), so one overflow skips them all.
  virtual bool gradients_overflowed() { return false; }
  // Call after every backward. At an accumulation boundary: unscale, clip, AdamW step, scheduler step, zero grads.
  virtual StepResult step(const StepOptions& options) = 0;
  StepResult step() { return step(StepOptions{}); }
  virtual double lr() const = 0;               // lr of the first group for the next optimizer step
  virtual int64_t global_step() const = 0;     // optimizer steps applied so far
  virtual void train(bool on = true) = 0;

  // A folder with everything needed to continue: weights, optimizer state, scheduler position, loss scale, RNG
  // and the caller's `client_state` (data position). Written under a temporary name and renamed into place.
  virtual void save_checkpoint(const std::filesystem::path& dir, const nlohmann::json& client_state) = 0;
  // Restores what save_checkpoint wrote and returns its client_state.
  virtual nlohmann::json load_checkpoint(const std::filesystem::path& dir) = 0;

  // While the returned guard lives every parameter is whole on this rank, so the model can be used directly:
  // the hybrid engine's rollout (gathered once, not per token), exporting the final model. Engines that keep
  // parameters whole return an empty guard. Collective under ZeRO-3: every rank calls it at the same point.
  virtual std::shared_ptr<void> gather_parameters() { return nullptr; }
  virtual MemoryFootprint memory() const { return {}; }
};

class DSCHAT_SDK_API Strategy {
 public:
  static constexpr const char* kind = "strategy";
  // 3: ForwardOptions, StepOptions, gradients_overflowed; 4: state_placement; 5: tensor_parallel_size,
  // place_frozen_model
  static constexpr int interface_version = 5;
  virtual ~Strategy() = default;

  virtual std::string describe() const = 0;  // e.g. "zero stage 2, offload optimizer"
  // Trains the parameters of `module` that require grad; `lm` is the causal LM inside it (or the module itself),
  // whose blocks the engine may wrap. Moves the module to the strategy's device. A strategy that only describes
  // itself (test plugins) keeps the default, which throws.
  virtual std::unique_ptr<Engine> make_engine(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<CausalLM> lm,
                                              const OptimizerOptions& options);
  // Where this strategy keeps a trained model's states on each of `world_size` ranks, for the memory planner
  // (dschat/sdk/memory_plan.h). The default: everything whole on every rank, as one process holds it.
  virtual StatePlacement state_placement(int64_t world_size) const {
    (void)world_size;
    return {};
  }
  // Adjacent ranks that hold one replica of each trained model between them and read the same batches (1: every
  // rank is a replica; see data_parallel() in distributed.h).
  virtual int tensor_parallel_size() const { return 1; }
  // Places a model the stage only runs forward (a reference or reward model) on `device`, the trained models'
  // engine device (frozen_model.h). The default keeps it whole on every rank (in host memory block by block when
  // offloaded); zero stage 3 shards its blocks over the ranks. Collective when it shards. Returns how it was
  // placed, for the stage's log.
  virtual std::string place_frozen_model(CausalLM& model, at::Device device, const FrozenPlacement& placement);
};

}  // namespace dschat
