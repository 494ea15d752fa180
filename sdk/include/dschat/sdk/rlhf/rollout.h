#pragma once
// Rollouts, the part every RL stage shares: prompts in, answers out, through the hybrid engine.
//
//   RolloutCollector collector(options, *actor, *actor_engine, *family, *generator, world());
//   Rollout r = collector.collect(prompts, sampling, metrics, step);   // throws ConsistencyError on disagreement
//   frozen_answer_logprobs(*reference, r.sequences, r.attention_mask, r.prompt_length - 1);
//
// collect() gathers the actor's weights once (ZeRO-3), generates inside a GenerationView (LoRA fused, eval, no
// grad) -- on a Megatron shard per rank when rollouts are tensor-parallel, in groups of inference_tp_size ranks
// -- then compares the generation path's log-probs with the training path's on a few rows, and logs the
// difference as consistency/max_abs_diff and consistency/mean_abs_diff. A rollout is token-in / token-out: the
// record keeps the ids as generated and the sampling log-probs, so nothing is re-tokenized.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/data.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/export.h"
#include "dschat/sdk/generation.h"

namespace dschat {

class CausalLM;
class Communicator;
class Engine;
class MetricsSink;
class ModelFamily;
class Tokenizer;
struct Mesh;

namespace rlhf {

// DeepSpeed-Chat's training-side mask: seq != pad. It also hides OPT's BOS (== pad) and a generated eos (== pad).
DSCHAT_SDK_API at::Tensor experience_mask(const at::Tensor& seq, int64_t pad_id);
// Indices of the rows whose answer (columns from prompt_length on) has more than one non-pad token; DeepSpeed-Chat
// drops the others before computing anything (`valid_ans_len > 1`).
DSCHAT_SDK_API at::Tensor rows_to_keep(const at::Tensor& seq, int64_t prompt_length, int64_t pad_id);
// Drops leading columns that are padding in every row of a left-padded prompt batch. Positions come from the
// mask, so the model's outputs do not change; DeepSpeed-Chat pads to max_prompt_seq_len and computes the pad
// columns anyway.
DSCHAT_SDK_API void trim_left_padding(at::Tensor& ids, at::Tensor& mask);
// The prompts of `set[indices]`, left-padded (collate_prompts), each repeated `copies` times in a row (GRPO's
// group of samples per prompt: rows i * copies .. i * copies + copies - 1 share prompt i), then trimmed.
DSCHAT_SDK_API PromptBatch rollout_prompts(const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices,
                                           int64_t max_prompt_seq_len, int64_t pad_id, bool trim, int64_t copies = 1);

// Log-probs of seq[:, 1:] as [B, L - 1] fp32 (DeepSpeed-Chat's layout) from a plain forward of `model` (a frozen
// reference, an evaluated EMA), computed from position `from` on only (the LM head over the prompt is never
// read); the columns before `from` are 0. Runs under the caller's grad mode.
DSCHAT_SDK_API at::Tensor frozen_answer_logprobs(CausalLM& model, const at::Tensor& seq, const at::Tensor& mask,
                                                 int64_t from);
// [B, L - 1 - from] log-probs (or any per-token tensor) padded on the left with `from` zero columns.
DSCHAT_SDK_API at::Tensor pad_front(const at::Tensor& per_token, int64_t from);

struct RolloutOptions {
  std::string stage;                      // for messages
  int64_t pad_id = 0;
  bool tensor_parallel = false;           // TP rollouts: each rank generates on a Megatron shard of the actor
  int64_t inference_tp_size = 1;          // ranks per TP group (tensor_parallel; the world size: one group)
  double consistency_threshold = 1e-3;    // past it collect() throws ConsistencyError
  bool consistency_mean = false;          // compare the mean difference (low precision), else the largest
  int64_t consistency_sample_rows = 2;    // rows compared (0: every row)
  double debug_corrupt_generation_logprobs = 0.0;  // test hook: added before the check, to prove it trips
};

// The pad id an RL stage's rollouts use: eos, as DeepSpeed-Chat sets pad = eos (every family but LLaMA), else the
// tokenizer's pad. Throws std::invalid_argument when it has neither.
DSCHAT_SDK_API int64_t rollout_pad_id(const Tokenizer& tokenizer);
// The generation plugin's defaults, stopping at the actor's eos (or `pad_id`) and padding with `pad_id`.
DSCHAT_SDK_API SamplingOptions rollout_sampling(const Generator& generator, const Tokenizer& tokenizer,
                                                int64_t pad_id);

// One rollout as generated (GenerationResult) plus what the check measured.
struct Rollout {
  GenerationResult generated;  // sequences [B, P + T], attention_mask, answer_mask [B, T], logprobs [B, T]
  double generation_seconds = 0.0;   // after the device's queued work
  double consistency_seconds = 0.0;  // the check's training-path forward (logged as time/consistency_s)
  double max_abs_diff = 0.0, mean_abs_diff = 0.0;  // generation vs training log-probs
};

class DSCHAT_SDK_API RolloutCollector {
 public:
  // `actor` is the engine's model; the references must outlive the collector. The TP groups (if any) are made
  // here, on every rank in the same order: construct it on every rank.
  RolloutCollector(RolloutOptions options, CausalLM& actor, Engine& actor_engine, const ModelFamily& family,
                   Generator& generator, Communicator& comm);
  ~RolloutCollector();

  // Answers to `prompts` (on the host or the device) sampled with `sampling`; metrics logged at `step`;
  // `rollout` numbers the rollout in messages.
  Rollout collect(const PromptBatch& prompts, const SamplingOptions& sampling, MetricsSink& metrics, int64_t step,
                  int64_t rollout);
  // Answers of `model` (the actor, an EMA) without the check or TP, inside its GenerationView: evaluation.
  // The caller gathers sharded weights.
  GenerationResult generate(CausalLM& model, const PromptBatch& prompts, const SamplingOptions& sampling);

 private:
  GenerationResult generate_tensor_parallel(const PromptBatch& prompts, const SamplingOptions& sampling);

  RolloutOptions o_;
  CausalLM& actor_;
  Engine& engine_;
  const ModelFamily& family_;
  Generator& generator_;
  Communicator& comm_;
  std::unique_ptr<Mesh> mesh_;          // TP x DP groups when inference_tp_size < world size
  std::shared_ptr<CausalLM> tp_shard_;  // this rank's Megatron shard of the actor, refreshed per rollout
};

}  // namespace rlhf
}  // namespace dschat
