#include "dschat/sdk/memory_plan.h"

#include <algorithm>
#include <map>
#include <stdexcept>

#include <c10/core/ScalarType.h>
#include <fmt/format.h>

namespace dschat {

namespace {

// Elements autograd keeps per token and layer, per unit of width, for this runtime's blocks: the normalised
// inputs the projections read, q/k/v before and after rotary, SDPA's output, the residual stream, the MLP's
// pre-activations and products (4 f-wide tensors with a gate: gate, up, act(gate), act(gate) * up; 2 without).
// Calibrated against measured peaks of SFT steps on LLaMA- and OPT-shaped models (see tools/bench/bench_plan.py).
constexpr double kSavedPerHidden = 7.0;
constexpr double kSavedPerKvWidth = 4.0;
constexpr double kSavedPerFfnGated = 4.0;
constexpr double kSavedPerFfnPlain = 2.0;
// Logits: the model-dtype LM-head output, then fp32 copies: the upcast, log_softmax and, with backward, its
// gradient.
constexpr double kLogitFp32CopiesForward = 2.0;
constexpr double kLogitFp32CopiesBackward = 3.0;

int64_t element_size(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

std::string dtype_name(at::ScalarType t) {
  return t == at::kBFloat16 ? "bf16" : t == at::kHalf ? "fp16" : t == at::kFloat ? "fp32" : c10::toString(t);
}

int64_t layer_activation_bytes(const ModelShape& s, int64_t tokens) {
  const double h = static_cast<double>(s.dims.hidden_size);
  const double kv = static_cast<double>(s.dims.num_kv_heads * s.dims.head_dim);
  const double f = static_cast<double>(s.intermediate_size);
  const double per_token =
      kSavedPerHidden * h + kSavedPerKvWidth * kv + (s.gated_mlp ? kSavedPerFfnGated : kSavedPerFfnPlain) * f;
  return static_cast<int64_t>(per_token * static_cast<double>(tokens)) * element_size(s.dtype);
}

}  // namespace

int64_t activation_bytes(const ModelShape& s, const ForwardLoad& load, bool gradient_checkpointing) {
  const int64_t tokens = load.batch * load.seq_len;
  const int64_t b = element_size(s.dtype);
  const int64_t layer = layer_activation_bytes(s, tokens);
  const int64_t mask = load.batch * load.seq_len * load.seq_len * b;  // the [B, 1, T, T] additive mask, shared
  int64_t blocks = 0;
  if (!load.backward) {
    blocks = 2 * layer;  // no graph: a block's working set, in and out
  } else if (gradient_checkpointing) {
    // Each block's input, then one block recomputed with its graph and the gradients flowing through it.
    blocks = s.dims.num_layers * tokens * s.dims.hidden_size * b + 2 * layer;
  } else {
    blocks = s.dims.num_layers * layer + layer;  // every block's saved tensors, plus the gradients of one
  }
  const double copies = load.backward ? kLogitFp32CopiesBackward : kLogitFp32CopiesForward;
  const int64_t logits = static_cast<int64_t>(static_cast<double>(load.batch * load.logits_positions * s.dims.vocab_size) *
                                              (static_cast<double>(b) + 4.0 * copies));
  return blocks + mask + logits;
}

int64_t kv_cache_bytes(const ModelShape& s, const KvCacheLoad& load) {
  return 2 * s.dims.num_layers * load.batch * load.length * s.dims.num_kv_heads * s.dims.head_dim *
         element_size(s.dtype);
}

int64_t PhasePlan::device_bytes() const {
  int64_t total = 0;
  for (const auto& t : terms)
    if (!t.host) total += t.bytes;
  return total;
}

int64_t PhasePlan::host_bytes() const {
  int64_t total = 0;
  for (const auto& t : terms)
    if (t.host) total += t.bytes;
  return total;
}

const MemoryTerm* PhasePlan::largest() const {
  const MemoryTerm* best = nullptr;
  for (const auto& t : terms)
    if (!t.host && (!best || t.bytes > best->bytes)) best = &t;
  return best;
}

const PhasePlan* StagePlan::peak() const {
  const PhasePlan* best = nullptr;
  for (const auto& p : phases)
    if (!best || p.device_bytes() > best->device_bytes()) best = &p;
  return best;
}

StagePlan plan_stage(const std::string& stage, const MemoryNeeds& needs,
                     const std::function<ModelShape(const std::string& role)>& shape_of,
                     const StatePlacement& placement, int64_t runtime_bytes, bool on_gpu) {
  StagePlan plan{stage, {}};
  std::vector<MemoryTerm> states;
  states.push_back({"runtime (LibTorch, plugins, data)", runtime_bytes, false});
  std::map<std::string, std::pair<ModelShape, const ModelUse*>> models;
  for (const auto& use : needs.models) {
    ModelShape s = shape_of(use.role.empty() ? use.name : use.role);
    if (use.dtype) s.dtype = *use.dtype;
    models[use.name] = {s, &use};
    const int64_t b = element_size(s.dtype);
    const int64_t lora = use.lora_dim * s.lora_parameters_per_dim;
    const int64_t whole = s.parameters + lora;
    const std::string dt = dtype_name(s.dtype);
    if (!use.trained) {  // blocks sharded (and one gathered at a time) under ZeRO-3; the rest whole
      const int64_t n = placement.frozen_block_shards;
      const int64_t blocks = s.block_parameters * s.dims.num_layers;
      const int64_t held = n > 1 ? whole - blocks + blocks / n + s.block_parameters : whole;
      states.push_back({fmt::format("{} weights ({}, frozen{})", use.name, dt,
                                    n > 1 ? fmt::format(", blocks 1/{} shard", n) : ""),
                        held * b, false});
      continue;
    }
    const int64_t trained =
        use.only_optimize_lora ? lora + (use.value_head ? s.dims.output_hidden_size : 0) : whole;
    const bool mixed = s.dtype != at::kFloat;
    states.push_back({fmt::format("{} weights ({}{})", use.name, dt,
                                  placement.parameter_shards > 1 ? fmt::format(", 1/{} shard", placement.parameter_shards)
                                                                 : ""),
                      whole * b / placement.parameter_shards, placement.parameters_on_host && on_gpu});
    const bool fp32_gradients = placement.fp32_gradients || placement.gradient_shards > 1;
    states.push_back({fmt::format("{} gradients ({}{})", use.name, fp32_gradients ? "fp32" : dt,
                                  placement.gradient_shards > 1 ? fmt::format(", 1/{} shard", placement.gradient_shards)
                                                                : ""),
                      trained * (fp32_gradients ? 4 : b) / placement.gradient_shards, false});
    const int64_t copies = (mixed || placement.fp32_master_weights) ? 3 : 2;
    states.push_back({fmt::format("{} optimizer ({}Adam moments{})", use.name, copies == 3 ? "fp32 master + " : "",
                                  placement.optimizer_shards > 1 ? fmt::format(", 1/{} shard", placement.optimizer_shards)
                                                                 : ""),
                      trained * 4 * copies / placement.optimizer_shards, placement.optimizer_on_host && on_gpu});
    const int64_t buffers =
        placement.gradient_buckets * s.block_parameters * 4 + placement.gathered_blocks * s.block_parameters * b;
    if (buffers > 0)
      states.push_back({fmt::format("{} communication buffers ({} gradient buckets, {} gathered blocks)", use.name,
                                    placement.gradient_buckets, placement.gathered_blocks),
                        buffers, false});
  }
  for (const auto& phase : needs.phases) {
    PhasePlan p{phase.name, states};
    for (const auto& f : phase.forwards) {
      auto it = models.find(f.model);
      if (it == models.end())
        throw std::invalid_argument(fmt::format("memory needs of stage {}: phase {} runs model '{}', which the "
                                                "stage's models do not list", stage, phase.name, f.model));
      const bool checkpointed = it->second.second->gradient_checkpointing || placement.recompute_blocks;
      p.terms.push_back({fmt::format("{} activations ({}, {} x {}{}{})", f.model, phase.name, f.batch, f.seq_len,
                                     f.backward ? (checkpointed ? ", checkpointed" : ", kept for backward") : "",
                                     f.logits_positions ? fmt::format(", logits over {}", f.logits_positions) : ""),
                         activation_bytes(it->second.first, f, checkpointed), false, true});
    }
    for (const auto& kv : phase.kv_caches) {
      auto it = models.find(kv.model);
      if (it == models.end())
        throw std::invalid_argument(fmt::format("memory needs of stage {}: phase {} caches model '{}', which "
                                                "the stage's models do not list", stage, phase.name, kv.model));
      p.terms.push_back({fmt::format("{} KV cache ({} x {})", kv.model, kv.batch, kv.length),
                         kv_cache_bytes(it->second.first, kv), false, true});
    }
    plan.phases.push_back(std::move(p));
  }
  return plan;
}

std::string format_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  return fmt::format("{:.0f} MB", b / 1e6);
}

}  // namespace dschat
