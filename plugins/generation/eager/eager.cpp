// `eager`: the reference decoder. Plain and obviously right: every step runs the full forward pass over the
// whole sequence so far (no cache) and keeps every row in the batch; finished rows just get padding. Slow by
// design; the tests hold `kv-cache` to it.
#include <memory>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <vector>

#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

class EagerGenerator : public Generator {
 public:
  explicit EagerGenerator(const ConfigTable& table)
      : defaults_(sampling_options_from_config(table)),
        stream_(generation::make_cpu_generator(static_cast<uint64_t>(table.get_int("seed", 1234, 0)))) {}

  const SamplingOptions& defaults() const override { return defaults_; }

  GenerationResult generate(CausalLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_mask,
                            const SamplingOptions& options) override {
    options.validate();
    generation::check_prompts(prompt_ids, prompt_mask);
    at::NoGradGuard no_grad;
    const auto device = model.device();
    const int64_t batch = prompt_ids.size(0), prompt_len = prompt_ids.size(1);
    auto rng = generation::generator_for(options, stream_);

    auto sequences = prompt_ids.to(device, at::kLong);
    auto mask = prompt_mask.to(device, at::kLong);
    auto running = at::ones({batch}, mask.options());  // 1 until the row emits eos
    std::vector<at::Tensor> logprobs;
    for (int64_t t = 0; t < options.max_new_tokens; ++t) {
      auto logits = model.forward(sequences, mask).logits;  // [B, P + t, V], recomputed from scratch
      auto last = logits.select(1, logits.size(1) - 1);
      auto pick = generation::pick_next(last, t, options, generation::draw_uniforms(batch, options, rng));
      auto tokens = at::where(running.ne(0), pick.tokens, at::full_like(pick.tokens, options.pad_token_id));
      sequences = at::cat({sequences, tokens.unsqueeze(1)}, 1);
      mask = at::cat({mask, running.unsqueeze(1)}, 1);
      logprobs.push_back(pick.logprobs * running.to(at::kFloat));
      if (options.on_step) {
        auto rows = at::nonzero(running).squeeze(1);
        if (!options.on_step(t, pick.tokens.index_select(0, rows), rows)) break;
      }
      running = running * generation::is_eos(pick.tokens, options).logical_not().to(at::kLong);
      if (running.eq(0).all().item<bool>()) break;
    }
    GenerationResult out;
    out.prompt_length = prompt_len;
    out.sequences = sequences;
    out.attention_mask = mask;
    out.answer_mask = mask.narrow(1, prompt_len, mask.size(1) - prompt_len).contiguous();
    out.logprobs = at::stack(logprobs, 1);
    return out;
  }

 private:
  SamplingOptions defaults_;
  at::Generator stream_;
};

}  // namespace

DSCHAT_PLUGIN("eager", "0.1.0", "reference decoding: full forward every step, no cache") {
  registrar.add<dschat::Generator>(
      "eager", "reference: recomputes the whole sequence every step (no KV cache)",
      [](const dschat::ConfigTable& options) { return std::make_shared<EagerGenerator>(options); });
}
