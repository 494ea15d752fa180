#pragma once
// Kind "generation": decodes left-padded prompts with a KV cache.
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>

namespace dschat {

class CausalLM;

struct SamplingOptions {
  int64_t max_new_tokens = 256;
  int64_t min_new_tokens = 0;
  bool greedy = false;
  double temperature = 1.0;
  int64_t top_k = 0;    // 0 disables
  double top_p = 1.0;   // 1 disables
  int64_t eos_token_id = -1;
  int64_t pad_token_id = 0;
  std::optional<uint64_t> seed;
};

struct GenerationResult {
  at::Tensor sequences;       // [B, P + T]: prompt followed by the answer, padded with pad_token_id after eos
  at::Tensor answer_logprobs; // [B, T]: log-probability of each generated token under the sampling model
};

class Generator {
 public:
  static constexpr const char* kind = "generation";
  static constexpr int interface_version = 1;
  virtual ~Generator() = default;

  // prompt_ids / prompt_mask: [B, P], left-padded.
  virtual GenerationResult generate(CausalLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_mask,
                                    const SamplingOptions& options) = 0;
};

}  // namespace dschat
