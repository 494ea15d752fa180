// `kv-cache`: the fast CPU decoding path. One KV cache preallocated for prompt + max_new_tokens, one prefill
// over the prompt (logits for its last position only), then one batched token per step. Rows that emit eos
// leave the working batch (KvCache::select_rows), so later steps cost only the rows still running.
#include <memory>

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/cat.h>
#include <ATen/core/grad_mode.h>

#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

class KvCacheGenerator : public Generator {
 public:
  explicit KvCacheGenerator(const ConfigTable& table)
      : defaults_(sampling_options_from_config(table)),
        stream_(generation::make_cpu_generator(static_cast<uint64_t>(table.get_int("seed", 1234, 0)))) {}

  const SamplingOptions& defaults() const override { return defaults_; }

  GenerationResult generate(CausalLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_mask,
                            const SamplingOptions& options) override {
    options.validate();
    generation::check_prompts(prompt_ids, prompt_mask);
    at::NoGradGuard no_grad;
    const auto device = model.device();
    const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device);
    const int64_t batch = prompt_ids.size(0), prompt_len = prompt_ids.size(1);
    const int64_t max_new = options.max_new_tokens;
    auto rng = generation::generator_for(options, stream_);

    auto ids = prompt_ids.to(device, at::kLong);
    // Mask for every column the cache will hold; decode steps read the prefix [0, P + t + 1).
    auto mask = at::zeros({batch, prompt_len + max_new}, long_opts);
    mask.narrow(1, 0, prompt_len).copy_(prompt_mask.to(device, at::kLong));

    auto answers = at::full({batch, max_new}, options.pad_token_id, long_opts);
    auto logprobs = at::zeros({batch, max_new}, at::TensorOptions().dtype(at::kFloat).device(device));
    auto lengths = at::zeros({batch}, long_opts);

    auto cache = model.allocate_cache(batch, prompt_len + max_new);
    auto logits = last_logits(model, ids, mask.narrow(1, 0, prompt_len), cache);
    auto active = at::arange(batch, long_opts);  // original row of each working row
    int64_t steps = 0;
    for (int64_t t = 0; t < max_new; ++t) {
      auto uniforms = generation::draw_uniforms(batch, options, rng);
      if (uniforms.defined()) uniforms = uniforms.to(device).index_select(0, active);
      auto pick = generation::pick_next(logits, t, options, uniforms);
      answers.select(1, t).index_copy_(0, active, pick.tokens);
      logprobs.select(1, t).index_copy_(0, active, pick.logprobs);
      lengths.index_fill_(0, active, t + 1);
      steps = t + 1;
      if (options.on_step && !options.on_step(t, pick.tokens, active)) break;
      if (t + 1 == max_new) break;

      auto next = pick.tokens;
      auto done = generation::is_eos(next, options);
      if (done.any().item<bool>()) {
        auto keep = at::nonzero(done.logical_not()).squeeze(1);
        if (keep.numel() == 0) break;
        active = active.index_select(0, keep);
        next = next.index_select(0, keep);
        mask = mask.index_select(0, keep);
        cache.select_rows(keep);
      }
      mask.select(1, prompt_len + t).fill_(1);
      logits = last_logits(model, next.unsqueeze(1), mask.narrow(1, 0, prompt_len + t + 1), cache);
    }

    GenerationResult out;
    out.prompt_length = prompt_len;
    auto steps_range = at::arange(steps, long_opts);
    out.answer_mask = (steps_range.unsqueeze(0) < lengths.unsqueeze(1)).to(at::kLong);
    out.sequences = at::cat({ids, answers.narrow(1, 0, steps)}, 1);
    out.attention_mask = at::cat({prompt_mask.to(device, at::kLong), out.answer_mask}, 1);
    out.logprobs = logprobs.narrow(1, 0, steps).contiguous();
    return out;
  }

 private:
  // Runs the new tokens through the model (appending to the cache) and returns the raw logits of the last
  // position only: [N, V]. The LM head over every prompt position would cost B * P * V for nothing.
  static at::Tensor last_logits(CausalLM& model, const at::Tensor& ids, const at::Tensor& mask, KvCache& cache) {
    auto hidden = model.forward(ids, mask, &cache, /*return_hidden=*/true, /*return_logits=*/false).hidden;
    return model.lm_logits(hidden.narrow(1, hidden.size(1) - 1, 1)).squeeze(1);
  }

  SamplingOptions defaults_;
  at::Generator stream_;
};

}  // namespace

DSCHAT_PLUGIN("kv-cache", "0.1.0", "CPU decoding with a preallocated KV cache") {
  registrar.add<dschat::Generator>(
      "kv-cache", "preallocated KV cache, one prefill then batched one-token steps; finished rows dropped",
      [](const dschat::ConfigTable& options) { return std::make_shared<KvCacheGenerator>(options); });
}
