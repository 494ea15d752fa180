// The pipeline's memory plan: each stage's models, shapes (built untouched), its algorithm's needs and its
// strategy's placement, against this machine's memory.
#include "dschat/framework/memory_planner.h"

#include <cstdlib>
#include <map>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/pipeline.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/tensor_parallel.h"

namespace dschat {

namespace {

int64_t env_int(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  try {
    return std::stoll(value);
  } catch (const std::exception&) {
    return fallback;
  }
}

int64_t mlp_width(const nlohmann::json& c, int64_t hidden) {
  for (const char* key : {"intermediate_size", "ffn_dim", "n_inner"})
    if (c.contains(key) && c[key].is_number_integer()) return c[key].get<int64_t>();
  return 4 * hidden;  // BLOOM, GPT-2 without n_inner
}

ModelShape shape_of(const ModelSpec& spec) {
  auto lm = build_untouched(spec);
  ModelShape s;
  s.dims = lm->dims();
  s.dtype = spec.scalar_type();
  s.intermediate_size = mlp_width(spec.hf_config, s.dims.hidden_size);
  for (const auto& p : lm->parameters()) s.parameters += p.numel();
  if (lm->num_blocks() > 0) {
    int64_t ffn_matrices = 0, in_plus_out = 0;
    for (const auto& p : lm->block(0).parameters()) {
      s.block_parameters += p.numel();
      if (p.dim() != 2) continue;
      in_plus_out += p.size(0) + p.size(1);
      if (p.size(0) == s.intermediate_size || p.size(1) == s.intermediate_size) ++ffn_matrices;
    }
    s.lora_parameters_per_dim = in_plus_out * static_cast<int64_t>(lm->num_blocks());
    s.gated_mlp = ffn_matrices >= 3;
  }
  return s;
}

// The stage's algorithm's description of the models it holds and the phases it runs.
MemoryNeeds memory_needs_of(const Pipeline& pipeline, const StageSpec& stage) {
  MemoryNeedsContext context;
  context.max_seq_len = pipeline.data.max_seq_len;
  context.max_prompt_seq_len = pipeline.data.max_prompt_seq_len;
  if (stage.generator) context.max_new_tokens = stage.generator->defaults().max_new_tokens;
  try {
    return stage.algorithm->memory_needs(context);
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("stage {}: the algorithm's memory needs: {}", stage.name, e.what()));
  }
}

}  // namespace

PipelinePlan plan_pipeline(const Pipeline& pipeline, const PlanOptions& options) {
  PipelinePlan plan;
  plan.world_size = options.world_size > 0 ? options.world_size : env_int("WORLD_SIZE", 1);
  plan.ranks_per_host = options.ranks_per_host > 0 ? options.ranks_per_host
                                                    : env_int("LOCAL_WORLD_SIZE", plan.world_size);
  c10::Device device = c10::kCPU;
  try {
    device = resolve_device(pipeline.device, 0, 1);
  } catch (const std::exception&) {
    // validate has reported a device this machine lacks; plan for the host
  }
  plan.on_gpu = device.is_cuda();
  // This process's own memory is the run's to reuse; what else the machine runs is not.
  const int64_t host = static_cast<int64_t>(available_host_memory() + resident_bytes());
  plan.host_capacity = host;
  if (plan.on_gpu) {
    for (const auto& a : list_accelerators())
      if (a.index == device.index()) {
        plan.device = a.name;
        plan.device_capacity = static_cast<int64_t>(a.memory_bytes);
      }
  } else {
    plan.device = "cpu (host memory)";
    plan.device_capacity = host / std::max<int64_t>(1, plan.ranks_per_host);
  }
  if (options.device_memory_bytes > 0) plan.device_capacity = options.device_memory_bytes;

  // LibTorch, the plugins and the data: this process holds them now; a GPU's allocator statistic starts at 0.
  const int64_t runtime = plan.on_gpu ? 0 : static_cast<int64_t>(resident_bytes());
  std::map<std::string, ModelShape> shapes;  // by folder and dtype: a stage chain reuses its root's shape
  for (const auto& stage : pipeline.stages) {
    const MemoryNeeds needs = memory_needs_of(pipeline, stage);
    if (!needs.described()) {
      plan.undescribed.push_back(stage.name);
      continue;
    }
    auto shape = [&](const std::string& role) {
      auto it = stage.roles.find(role);
      if (it == stage.roles.end())
        throw std::runtime_error(fmt::format("stage {}: the memory needs name model role '{}', which the stage "
                                             "does not have", stage.name, role));
      const ModelSpec& spec = root_model(pipeline, it->second);
      const std::string key = spec.path.string() + "|" + spec.dtype;
      if (!shapes.count(key)) shapes.emplace(key, shape_of(spec));
      return shapes.at(key);
    };
    const StatePlacement placement = stage.strategy.strategy->state_placement(plan.world_size);
    plan.stages.push_back(plan_stage(stage.name, needs, shape, placement, runtime, plan.on_gpu));
  }
  return plan;
}

std::string describe_plan(const PipelinePlan& plan) {
  std::string out = fmt::format("memory plan per rank ({} rank{}, {} per host), device {}: {} available\n",
                                plan.world_size, plan.world_size == 1 ? "" : "s", plan.ranks_per_host, plan.device,
                                format_bytes(plan.device_capacity));
  const auto term_line = [](const MemoryTerm& t) {
    return fmt::format("    {:>10}  {}{}\n", format_bytes(t.bytes), t.name, t.host ? " [host memory]" : "");
  };
  for (const auto& stage : plan.stages) {
    const PhasePlan* peak = stage.peak();
    out += fmt::format("stage {}: peak {} in {}\n  held throughout:\n", stage.stage,
                       format_bytes(peak->device_bytes()), peak->name);
    for (const auto& term : peak->terms)
      if (!term.transient) out += term_line(term);
    for (const auto& phase : stage.phases) {
      out += fmt::format("  {}{}: {}{}\n", phase.name, &phase == peak ? " (peak)" : "",
                         format_bytes(phase.device_bytes()),
                         phase.host_bytes() ? fmt::format(" + {} in host memory", format_bytes(phase.host_bytes())) : "");
      for (const auto& term : phase.terms)
        if (term.transient) out += term_line(term);
    }
  }
  for (const auto& name : plan.undescribed)
    out += fmt::format("stage {}: not planned (its algorithm does not describe its memory)\n", name);
  return out;
}

nlohmann::json plan_json(const PipelinePlan& plan) {
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& stage : plan.stages) {
    nlohmann::json phases = nlohmann::json::array();
    for (const auto& phase : stage.phases) {
      nlohmann::json terms = nlohmann::json::array();
      for (const auto& t : phase.terms)
        terms.push_back({{"name", t.name}, {"bytes", t.bytes}, {"host", t.host}, {"transient", t.transient}});
      phases.push_back({{"name", phase.name}, {"device_bytes", phase.device_bytes()},
                        {"host_bytes", phase.host_bytes()}, {"terms", terms}});
    }
    stages.push_back({{"stage", stage.stage}, {"peak_bytes", stage.peak()->device_bytes()},
                      {"peak_phase", stage.peak()->name}, {"phases", phases}});
  }
  return {{"world_size", plan.world_size}, {"ranks_per_host", plan.ranks_per_host}, {"device", plan.device},
          {"device_capacity_bytes", plan.device_capacity}, {"host_capacity_bytes", plan.host_capacity},
          {"stages", stages}, {"undescribed", plan.undescribed}};
}

namespace {

// What would shrink the largest term, in the order a user would try it.
std::string remedies(const MemoryTerm& term, bool on_gpu) {
  const auto has = [&](const char* word) { return term.name.find(word) != std::string::npos; };
  if (has("activations"))
    return "turn on gradient checkpointing (gradient_checkpointing = true, or actor_/critic_gradient_checkpointing "
           "in ppo), or lower the batch size or max_seq_len";
  if (has("KV cache")) return "lower per_device_generation_batch_size, max_prompt_seq_len or max_new_tokens";
  if (has("optimizer"))
    return std::string("shard the optimizer over more ranks (strategy zero, stage >= 1), ") +
           (on_gpu ? "offload it (offload_optimizer = true), " : "") +
           "or train LoRA adapters only (lora_dim > 0, only_optimize_lora = true)";
  if (has("gradients"))
    return "shard the gradients (strategy zero, stage >= 2) or train LoRA adapters only (only_optimize_lora = true)";
  if (has("weights"))
    return "load the model in bf16 ([models.X] dtype = \"bf16\") or shard the weights (strategy zero, stage = 3)";
  return "use a machine with more memory";
}

}  // namespace

std::optional<std::string> plan_refusal(const PipelinePlan& plan) {
  std::string out;
  for (const auto& stage : plan.stages) {
    const PhasePlan* peak = stage.peak();
    const bool device_short = peak->device_bytes() > plan.device_capacity;
    const bool host_short = plan.on_gpu && peak->host_bytes() * plan.ranks_per_host > plan.host_capacity;
    if (!device_short && !host_short) continue;
    const MemoryTerm* largest = peak->largest();
    if (device_short)
      out += fmt::format("stage {} needs {} per rank in its {} phase, and {} has {}; the largest term is {} ({}): "
                         "{}\n",
                         stage.stage, format_bytes(peak->device_bytes()), peak->name, plan.device,
                         format_bytes(plan.device_capacity), largest->name, format_bytes(largest->bytes),
                         remedies(*largest, plan.on_gpu));
    if (host_short)
      out += fmt::format("stage {} offloads {} per rank to host memory ({} ranks per host), and the host has {} "
                         "available\n",
                         stage.stage, format_bytes(peak->host_bytes()), plan.ranks_per_host,
                         format_bytes(plan.host_capacity));
  }
  if (out.empty()) return std::nullopt;
  return out;
}

// A tensor-parallel strategy cuts each model it trains: a layout that does not divide (SmolLM2's 9 heads over 2
// ranks) is found here, from models built untouched, rather than when the stage starts.
std::optional<std::string> tensor_parallel_refusal(const Pipeline& pipeline) {
  for (const auto& stage : pipeline.stages) {
    const int64_t tp_size = stage.strategy.strategy->tensor_parallel_size();
    if (tp_size <= 1) continue;
    for (const auto& use : memory_needs_of(pipeline, stage).models) {
      if (!use.trained) continue;
      const std::string role = use.role.empty() ? use.name : use.role;
      auto it = stage.roles.find(role);
      if (it == stage.roles.end()) continue;  // the memory plan reports it
      const ModelSpec& spec = root_model(pipeline, it->second);
      try {
        check_tensor_parallel_layout(*spec.family, *build_untouched(spec), tp_size, {.trainable = true});
      } catch (const c10::Error& e) {
        return fmt::format("stage {}: strategy '{}' cannot split role '{}' ({}): {}", stage.name,
                           stage.strategy.plugin, role, it->second, e.what_without_backtrace());
      }
    }
  }
  return std::nullopt;
}

}  // namespace dschat
