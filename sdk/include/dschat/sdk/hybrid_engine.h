#pragma once
// The hybrid engine's generation view: one set of actor weights, switched between the training layout and the
// generation layout for the length of a rollout.
//
//   {
//     GenerationView view(actor, {.on_enter = gather_all, .on_exit = release_gathered});
//     auto out = generator.generate(actor, prompts, mask, options);   // fused LoRA, eval, no-grad
//   }                                                                  // unfused, train mode restored
//   double diff = check_consistency(actor, out.sequences, out.attention_mask, out.prompt_length,
//                                   out.logprobs, /*sample_rows=*/2, /*threshold=*/1e-3);
//
// The generation path and the training path must give the same log-probabilities for the same tokens
// (DeepSpeed-Chat's LLaMA/BLOOM hybrid-engine gibberish was exactly this going wrong silently), hence the
// sampled check below, meant to run after every rollout and be logged as a metric.
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>

#include "dschat/sdk/export.h"

namespace dschat {

class CausalLM;
class LoraLinearImpl;

struct GenerationViewOptions {
  // Called first on entry and last on exit. The strategy fills these in: ZeRO-3 gathers every shard once per
  // rollout (not per token) in on_enter and frees the gathered copies in on_exit; tensor parallelism could
  // re-shard here. Empty: nothing to do (single process).
  std::function<void()> on_enter;
  std::function<void()> on_exit;
  // Keep a copy of each LoRA layer's base weight and restore it bit for bit on exit, instead of trusting
  // W + d - d == W (false in bf16/fp16: the base weight would drift a little with every rollout). Costs one
  // copy of the LoRA-targeted weights while the view is open.
  bool exact_restore = true;
};

// RAII: on entry on_enter(), fuse LoRA into the weights, eval mode, grad off; on exit the reverse, in reverse
// order. The KV cache is allocated and freed inside each generate() call, so nothing of it outlives the view.
// Not copyable or movable; use on one thread (the grad mode is thread-local).
class DSCHAT_SDK_API GenerationView {
 public:
  explicit GenerationView(CausalLM& model, GenerationViewOptions options = {});
  ~GenerationView();
  GenerationView(const GenerationView&) = delete;
  GenerationView& operator=(const GenerationView&) = delete;

  size_t fused_layers() const { return fused_.size(); }

 private:
  CausalLM& model_;
  GenerationViewOptions options_;
  bool was_training_ = false;
  std::vector<std::pair<LoraLinearImpl*, at::Tensor>> fused_;  // layer, its saved base weight (if exact)
  std::unique_ptr<at::AutoGradMode> grad_mode_;
};

// The error check_consistency raises.
class DSCHAT_SDK_API ConsistencyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Recomputes the training path's log-probs of the answer tokens (one full forward, no cache, as the model is
// now: LoRA unfused; in eval mode so dropout does not count; no grad) for `sample_rows` rows spread evenly over
// the batch, and returns max |recomputed - generation_logprobs| over the answer positions that attention_mask
// marks. sequences / attention_mask: [B, P + T]; generation_logprobs: [B, T]; answer_start = P.
// sample_rows <= 0 or >= B: every row.
DSCHAT_SDK_API double logprob_consistency(CausalLM& model, const at::Tensor& sequences,
                                          const at::Tensor& attention_mask, int64_t answer_start,
                                          const at::Tensor& generation_logprobs, int64_t sample_rows);

// The same comparison, as the largest and the mean |difference| over the compared answer tokens. In bf16/fp16
// the largest is rounding-bound, not exactness-bound: both paths round every op's output, logits of size 16-32
// are 0.125 apart, and deep models (30 layers, outlier activations) move single tokens by up to ~1 while the
// mean stays small; a real mismatch (mask, positions, cache, stale weights) moves the mean.
struct LogprobAgreement {
  double max_abs_diff = 0.0;
  double mean_abs_diff = 0.0;
};
DSCHAT_SDK_API LogprobAgreement logprob_agreement(CausalLM& model, const at::Tensor& sequences,
                                                  const at::Tensor& attention_mask, int64_t answer_start,
                                                  const at::Tensor& generation_logprobs, int64_t sample_rows);

// logprob_consistency, throwing ConsistencyError past `threshold` (the message gives both numbers and the
// likely causes). Returns the difference.
DSCHAT_SDK_API double check_consistency(CausalLM& model, const at::Tensor& sequences,
                                        const at::Tensor& attention_mask, int64_t answer_start,
                                        const at::Tensor& generation_logprobs, int64_t sample_rows,
                                        double threshold);

}  // namespace dschat
