#pragma once
// Memory planning (DESIGN §6): the bytes one rank holds in each phase of a stage, computed before any work starts
// from three descriptions: the models' shapes, what the algorithm runs (MemoryNeeds, from
// Algorithm::memory_needs) and where the strategy keeps a trained model's states (StatePlacement, from
// Strategy::state_placement). `dschat plan` prints the result; `validate` and `run` refuse a stage whose plan
// exceeds the device's memory.
//
// Activation figures are a model of this runtime's eager LibTorch blocks (what autograd saves per layer and
// token, calibrated against measured peaks; see activation_bytes), not a universal law: a plugin family with
// other blocks shifts them.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "dschat/sdk/export.h"
#include "dschat/sdk/model.h"

namespace dschat {

// Where a strategy keeps one trained model's states on each rank. Each count divides the whole.
struct StatePlacement {
  int64_t parameter_shards = 1;  // ZeRO-3: the world size
  int64_t gradient_shards = 1;   // ZeRO-2 and 3
  int64_t optimizer_shards = 1;  // ZeRO-1, 2 and 3
  bool optimizer_on_host = false;   // fp32 master weights and Adam moments in host memory (CPU Adam)
  bool parameters_on_host = false;  // ZeRO-3 parameter offload: the shards in host memory
  bool fp32_master_weights = false;  // an fp32 copy of the weights even for fp32 models (the partitioned engine)
  bool fp32_gradients = false;       // gradients kept in fp32 whatever the model's dtype
  bool recompute_blocks = false;     // blocks recomputed in backward whatever the stage asks (ZeRO-3)
  int64_t gradient_buckets = 0;      // fp32 buffers of one block's gradients being reduced at once
  int64_t gathered_blocks = 0;       // ZeRO-3: blocks whose whole weights are gathered at once (with prefetch)
  int64_t frozen_block_shards = 1;   // ZeRO-3: a frozen model's blocks split over this many ranks (frozen_model.h)
};

// How a stage uses one of its models.
struct ModelUse {
  std::string name;  // what the phases call it ("actor", "reference")
  std::string role;  // the stage's model role it is built from (its shape); empty: the name
  bool trained = false;
  bool value_head = false;  // read through a value head: no LM-head logits
  int64_t lora_dim = 0;
  bool only_optimize_lora = false;  // only the adapters (and a value head) get gradients and Adam states
  bool gradient_checkpointing = false;
  std::optional<at::ScalarType> dtype;  // the stage's override of the model's dtype
};

// One forward pass whose activations are alive at the phase's peak.
struct ForwardLoad {
  std::string model;  // a ModelUse name
  int64_t batch = 0;
  int64_t seq_len = 0;
  int64_t logits_positions = 0;  // positions whose LM-head logits are computed (0: none)
  bool backward = false;         // autograd keeps the activations for a backward pass
};

// A KV cache alive at the phase's peak (generation).
struct KvCacheLoad {
  std::string model;  // a ModelUse name
  int64_t batch = 0;
  int64_t length = 0;  // prompt + new tokens
};

struct PhaseLoad {
  std::string name;  // "training", "rollout", "experience", ...
  std::vector<ForwardLoad> forwards;
  std::vector<KvCacheLoad> kv_caches;
};

// What an algorithm tells the planner: its models (every one it holds during the stage) and its phases.
struct MemoryNeeds {
  std::vector<ModelUse> models;
  std::vector<PhaseLoad> phases;
  bool described() const { return !models.empty(); }
};

// What memory_needs is given beyond the algorithm's own options.
struct MemoryNeedsContext {
  int64_t max_seq_len = 512;
  int64_t max_prompt_seq_len = 256;
  int64_t max_new_tokens = 0;  // the stage's generator's; 0 without one
};

// A model's shape as the planner needs it.
struct ModelShape {
  ModelDims dims;
  int64_t intermediate_size = 0;  // MLP width
  int64_t parameters = 0;         // every parameter of the causal LM
  int64_t lora_parameters_per_dim = 0;  // sum of (in + out) over the block linears LoRA targets
  int64_t block_parameters = 0;         // one decoder block's (what a gradient bucket or a ZeRO-3 gather holds)
  bool gated_mlp = false;               // gate, up and down projections (LLaMA) rather than two (OPT, BLOOM)
  at::ScalarType dtype = at::kFloat;
};

struct MemoryTerm {
  std::string name;  // "actor optimizer states (fp32 master + Adam, 1/2)"
  int64_t bytes = 0;
  bool host = false;  // in host memory while the model's device is a GPU (offload)
  bool transient = false;  // the phase's own (activations, caches); otherwise held through the whole stage
};

struct DSCHAT_SDK_API PhasePlan {
  std::string name;
  std::vector<MemoryTerm> terms;
  int64_t device_bytes() const;
  int64_t host_bytes() const;
  const MemoryTerm* largest() const;  // of the device terms
};

struct DSCHAT_SDK_API StagePlan {
  std::string stage;
  std::vector<PhasePlan> phases;
  const PhasePlan* peak() const;  // the phase with the most device bytes
};

// Bytes the activations of one forward keep alive (the model's dtype; logits in fp32 as the losses read them).
DSCHAT_SDK_API int64_t activation_bytes(const ModelShape& shape, const ForwardLoad& load, bool gradient_checkpointing);
DSCHAT_SDK_API int64_t kv_cache_bytes(const ModelShape& shape, const KvCacheLoad& load);

// The plan of one stage. `shape_of(role)` gives each role's shape; `runtime_bytes` is what the process holds
// before any model (LibTorch, plugins, data), counted in every phase. `on_gpu`: the models live on a GPU, so
// offloaded terms go to host memory.
DSCHAT_SDK_API StagePlan plan_stage(const std::string& stage, const MemoryNeeds& needs,
                                    const std::function<ModelShape(const std::string& role)>& shape_of,
                                    const StatePlacement& placement, int64_t runtime_bytes, bool on_gpu);

// "1.23 GB" (decimal, as `free -g` and nvidia-smi print).
DSCHAT_SDK_API std::string format_bytes(int64_t bytes);

}  // namespace dschat
