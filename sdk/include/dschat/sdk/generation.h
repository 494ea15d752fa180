#pragma once
// Kind "generation": decodes left-padded prompts (greedy, temperature, top-k, top-p, min/max new tokens, eos).
//
//   auto options = generator.defaults();          // what the pipeline's [stage.generation] table set
//   options.eos_token_ids = {tokenizer eos};      // per-call overrides: copy the defaults, change fields
//   options.pad_token_id = pad;
//   options.seed = pipeline_seed + step;          // fixed seed -> reproducible samples
//   auto out = generator.generate(model, prompt_ids, prompt_mask, options);
//
// Call it inside a GenerationView (hybrid_engine.h) so LoRA is fused and the model is in eval / no-grad mode.
//
// Sampling is reproducible across implementations: each step draws exactly one uniform number per *original*
// batch row (whether or not the row is still running) and picks the token by inverse CDF. So the tokens depend
// only on (seed, row, step) and the logits, not on how many rows a generator keeps in its working batch.
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

class CausalLM;
class ConfigTable;

struct DSCHAT_SDK_API SamplingOptions {
  int64_t max_new_tokens = 256;
  int64_t min_new_tokens = 0;  // eos is suppressed (logit -inf) until this many tokens were generated
  bool do_sample = true;       // false: greedy (argmax)
  double temperature = 1.0;
  int64_t top_k = 0;    // 0 disables
  double top_p = 1.0;   // 1 disables
  // Generation stops for a row when it emits one of these (the eos itself is kept as the row's last token).
  // Empty: never stop early.
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = 0;  // fills answers after their end
  // Set: a fresh generator seeded with it for this call. Unset: the Generator's own stream (seeded by its
  // `seed` option), which advances from call to call.
  std::optional<uint64_t> seed;
  // Set: called after every decode step with the step (0-based), the tokens just chosen for the rows still
  // running [N] and those rows' original indices [N]. Returning false ends generation for every row after this
  // step. Streaming output (`dschat chat`) and stop strings are built on it.
  std::function<bool(int64_t step, const at::Tensor& tokens, const at::Tensor& rows)> on_step;

  // Throws std::invalid_argument naming the bad field.
  void validate() const;
};

// Reads max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p from a [generation] table, with
// SamplingOptions' defaults; bad values are ConfigErrors that name file:line:col.
DSCHAT_SDK_API SamplingOptions sampling_options_from_config(const ConfigTable& table);

struct GenerationResult {
  at::Tensor sequences;       // [B, P + T] int64: the prompt as given (left-padded), then the answer
                              //   right-padded with pad_token_id after the row's end
  at::Tensor attention_mask;  // [B, P + T] int64: the prompt mask, then answer_mask
  at::Tensor answer_mask;     // [B, T] int64: 1 for each generated token, up to and including eos
  // [B, T] float32: log_softmax of the model's *raw* logits (before temperature, top-k, top-p and the eos
  // suppression of min_new_tokens) at the chosen token; 0 where answer_mask is 0. This is what the training
  // path computes for the same tokens, i.e. PPO's old log-probs.
  at::Tensor logprobs;
  int64_t prompt_length = 0;  // P
  // T = the longest answer (<= max_new_tokens; shorter when every row hit eos early).
};

class Generator {
 public:
  static constexpr const char* kind = "generation";
  // 2: SamplingOptions/GenerationResult reworked (eos list, answer mask, log-probs), defaults().
  // 3: SamplingOptions::on_step.
  static constexpr int interface_version = 3;
  virtual ~Generator() = default;

  // The options the factory read; copy and change fields for a per-call override.
  virtual const SamplingOptions& defaults() const = 0;

  // prompt_ids / prompt_mask: [B, P], left-padded (every row's last column is a real token). Runs under
  // no-grad; the model's mode is the caller's (use eval, e.g. through a GenerationView).
  virtual GenerationResult generate(CausalLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_mask,
                                    const SamplingOptions& options) = 0;
};

// ---- shared decoding pieces, so that every generation plugin samples the same way ----
namespace generation {

// Checks shapes and dtypes of a left-padded prompt batch; std::invalid_argument on bad input.
DSCHAT_SDK_API void check_prompts(const at::Tensor& prompt_ids, const at::Tensor& prompt_mask);

struct Pick {
  at::Tensor tokens;    // [N] int64
  at::Tensor logprobs;  // [N] float32, log_softmax(raw logits) at tokens
};

// Chooses the next token of N rows from raw logits [N, V] at answer step `step` (0-based): eos suppressed
// while step < min_new_tokens, then greedy argmax, or temperature -> top-k -> top-p -> inverse-CDF sampling
// with `uniforms` [N] in [0, 1).
DSCHAT_SDK_API Pick pick_next(const at::Tensor& raw_logits, int64_t step, const SamplingOptions& options,
                              const at::Tensor& uniforms);

// The generator a call samples from: a fresh one for options.seed, else `stream`.
DSCHAT_SDK_API at::Generator generator_for(const SamplingOptions& options, at::Generator& stream);
DSCHAT_SDK_API at::Generator make_cpu_generator(uint64_t seed);

// One uniform per original row for this step ([B] float32), or undefined for greedy decoding.
DSCHAT_SDK_API at::Tensor draw_uniforms(int64_t batch, const SamplingOptions& options, at::Generator& generator);

// Mask of the tokens that end a row ([N] bool).
DSCHAT_SDK_API at::Tensor is_eos(const at::Tensor& tokens, const SamplingOptions& options);

}  // namespace generation
}  // namespace dschat
