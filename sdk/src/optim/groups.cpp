// Parameter groups, schedules, LoRA selection and the shared training options (see dschat/sdk/optim.h).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dschat/sdk/loss_scale.h"
#include "dschat/sdk/optim.h"

namespace dschat {

std::unique_ptr<Engine> Strategy::make_engine(std::shared_ptr<torch::nn::Module>, std::shared_ptr<CausalLM>,
                                              const OptimizerOptions&) {
  throw std::logic_error("strategy '" + describe() + "' cannot make training engines");
}

std::string Strategy::place_frozen_model(CausalLM& model, at::Device device, const FrozenPlacement& placement) {
  return place_frozen_blocks(model, device, placement);
}

double lr_multiplier(const std::string& scheduler, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  if (scheduler != "constant" && scheduler != "constant_with_warmup" && scheduler != "linear" && scheduler != "cosine")
    throw std::invalid_argument("unknown lr scheduler '" + scheduler +
                                "' (cosine, linear, constant, constant_with_warmup)");
  if (scheduler == "constant") return 1.0;  // HF's "constant" ignores warmup
  if (step < warmup_steps) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  if (scheduler == "constant_with_warmup") return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  if (scheduler == "linear") return std::max(0.0, static_cast<double>(total_steps - step) / span);
  const double progress = static_cast<double>(step - warmup_steps) / span;  // cosine, num_cycles 0.5
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

const char* to_string(ParamGroupKind kind) {
  switch (kind) {
    case ParamGroupKind::decay: return "decay";
    case ParamGroupKind::lora: return "lora";
    case ParamGroupKind::no_decay: return "no_decay";
  }
  return "?";
}

ParamGroupKind param_group_of(const std::string& name) {
  if (name.find("lora_right_weight") != std::string::npos || name.find("lora_left_weight") != std::string::npos)
    return ParamGroupKind::lora;
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* marker : {"bias", "layer_norm", "layernorm", "norm.weight", "ln_"}) {
    if (lower.find(marker) != std::string::npos) return ParamGroupKind::no_decay;
  }
  return ParamGroupKind::decay;
}

std::vector<NamedParam> trainable_parameters(const torch::nn::Module& module) {
  std::vector<NamedParam> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    out.push_back({item.key(), item.value(), param_group_of(item.key())});
  }
  return out;
}

size_t enable_lora_where(torch::nn::Module& module, const std::string& module_name,
                         const std::vector<std::string>& targets, const LoraOptions& options) {
  size_t count = 0;
  for (auto& item : module.named_modules()) {
    auto* linear = dynamic_cast<LoraLinearImpl*>(item.value().get());
    if (linear == nullptr || linear->has_lora()) continue;
    const std::string& path = item.key();
    if (!module_name.empty() && path.find(module_name) == std::string::npos) continue;
    auto dot = path.rfind('.');
    std::string own = dot == std::string::npos ? path : path.substr(dot + 1);
    if (!targets.empty() && std::find(targets.begin(), targets.end(), own) == targets.end()) continue;
    linear->enable_lora(options);
    ++count;
  }
  if (count == 0)
    throw std::invalid_argument(fmt::format("LoRA: no linear layer whose path contains '{}' is named any of [{}]",
                                            module_name, fmt::join(targets, ", ")));
  return count;
}

void freeze_all_but_lora(torch::nn::Module& module, const std::vector<std::string>& keep) {
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    bool trainable = param_group_of(item.key()) == ParamGroupKind::lora;
    for (const auto& k : keep) trainable = trainable || item.key().find(k) != std::string::npos;
    item.value().requires_grad_(trainable);
  }
}

TrainOptions read_train_options(const ConfigTable& t, const TrainDefaults& defaults) {
  TrainOptions o;
  o.model_role_reference = t.get_string("model");
  o.epochs = t.get_int("epochs", 1, 1);
  o.per_device_train_batch_size = t.get_int("per_device_train_batch_size", 16, 1);
  o.per_device_eval_batch_size = t.get_int("per_device_eval_batch_size", o.per_device_train_batch_size, 1);
  o.max_steps = t.get_int("max_steps", 0, 0);
  o.eval_interval = t.get_int("eval_interval", 0, 0);
  o.eval_iters = t.get_int("eval_iters", 0, 0);
  o.checkpoint_interval = t.get_int("checkpoint_interval", 0, 0);
  o.max_nonfinite_steps = t.get_int("max_nonfinite_steps", 3, 1);
  o.lora_dim = t.get_int("lora_dim", 0, 0);
  o.lora_scaling = t.get_float("lora_scaling", 1.0);
  o.lora_module_name = t.get_string("lora_module_name", "");
  o.lora_targets = t.get_string_list("lora_targets", std::vector<std::string>{});
  o.only_optimize_lora = t.get_bool("only_optimize_lora", false);
  if (o.only_optimize_lora && o.lora_dim == 0) t.fail("only_optimize_lora", "needs lora_dim > 0");
  if (t.has("dtype")) {
    auto d = t.get_choice("dtype", {"fp32", "bf16", "fp16"});
    o.dtype = d == "bf16" ? at::kBFloat16 : d == "fp16" ? at::kHalf : at::kFloat;
  }

  auto& opt = o.optimizer;
  opt.learning_rate = t.get_float("learning_rate", defaults.learning_rate, 0.0);
  opt.lora_learning_rate = t.get_float("lora_learning_rate", 5e-4, 0.0);
  opt.weight_decay = t.get_float("weight_decay", defaults.weight_decay, 0.0);
  opt.max_grad_norm = t.get_float("max_grad_norm", 1.0);
  opt.lr_scheduler = t.get_choice("lr_scheduler", {"cosine", "linear", "constant", "constant_with_warmup"}, "cosine");
  opt.num_warmup_steps = t.get_int("num_warmup_steps", 0, 0);
  opt.gradient_accumulation_steps = t.get_int("gradient_accumulation_steps", 1, 1);
  opt.gradient_checkpointing = t.get_bool("gradient_checkpointing", false);
  read_loss_scale_options(t, opt);
  return o;
}

MemoryNeeds one_model_memory_needs(const TrainOptions& options, int64_t seq_len, int64_t sequences_per_row,
                                   bool value_head) {
  MemoryNeeds needs;
  ModelUse use;
  use.name = "model";
  use.trained = true;
  use.value_head = value_head;
  use.lora_dim = options.lora_dim;
  use.only_optimize_lora = options.only_optimize_lora;
  use.gradient_checkpointing = options.optimizer.gradient_checkpointing;
  use.dtype = options.dtype;
  needs.models.push_back(use);
  const int64_t logits = value_head ? 0 : seq_len;
  needs.phases.push_back(
      {"training", {{"model", options.per_device_train_batch_size * sequences_per_row, seq_len, logits, true}}, {}});
  needs.phases.push_back(
      {"evaluation", {{"model", options.per_device_eval_batch_size * sequences_per_row, seq_len, logits, false}}, {}});
  return needs;
}

}  // namespace dschat
