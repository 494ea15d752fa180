// Sampling shared by the generation plugins: one implementation of the logits processing so that `eager` and
// `kv-cache` (and later `cuda`) choose tokens identically from identical logits.
#include "dschat/sdk/generation.h"

#include <limits>
#include <stdexcept>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>

#include "dschat/sdk/nn/decode_ops.h"
#include <ATen/ops/zeros_like.h>

#include "dschat/sdk/config.h"

namespace dschat {

namespace {
[[noreturn]] void bad(const std::string& message) { throw std::invalid_argument("generation: " + message); }
}  // namespace

void SamplingOptions::validate() const {
  if (max_new_tokens < 1) bad("max_new_tokens must be >= 1, got " + std::to_string(max_new_tokens));
  if (min_new_tokens < 0) bad("min_new_tokens must be >= 0, got " + std::to_string(min_new_tokens));
  if (min_new_tokens > max_new_tokens)
    bad("min_new_tokens (" + std::to_string(min_new_tokens) + ") exceeds max_new_tokens (" +
        std::to_string(max_new_tokens) + ")");
  if (!(temperature > 0.0)) bad("temperature must be > 0, got " + std::to_string(temperature));
  if (top_k < 0) bad("top_k must be >= 0 (0 disables), got " + std::to_string(top_k));
  if (!(top_p > 0.0 && top_p <= 1.0)) bad("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (pad_token_id < 0) bad("pad_token_id must be >= 0, got " + std::to_string(pad_token_id));
  for (auto id : eos_token_ids) {
    if (id < 0) bad("eos_token_ids must be >= 0, got " + std::to_string(id));
  }
}

SamplingOptions sampling_options_from_config(const ConfigTable& table) {
  SamplingOptions o;
  o.max_new_tokens = table.get_int("max_new_tokens", o.max_new_tokens, 1);
  o.min_new_tokens = table.get_int("min_new_tokens", o.min_new_tokens, 0);
  o.do_sample = table.get_bool("do_sample", o.do_sample);
  o.temperature = table.get_float("temperature", o.temperature);
  o.top_k = table.get_int("top_k", o.top_k, 0);
  o.top_p = table.get_float("top_p", o.top_p);
  if (o.min_new_tokens > o.max_new_tokens)
    table.fail("min_new_tokens", "must not exceed max_new_tokens (" + std::to_string(o.max_new_tokens) + ")");
  if (!(o.temperature > 0.0)) table.fail("temperature", "must be > 0");
  if (!(o.top_p > 0.0 && o.top_p <= 1.0)) table.fail("top_p", "must be in (0, 1]");
  return o;
}

namespace generation {

void check_prompts(const at::Tensor& prompt_ids, const at::Tensor& prompt_mask) {
  if (!prompt_ids.defined() || prompt_ids.dim() != 2 || prompt_ids.size(0) < 1 || prompt_ids.size(1) < 1)
    bad("prompt_ids must be a non-empty [batch, prompt_length] tensor");
  if (!prompt_mask.defined() || prompt_mask.sizes() != prompt_ids.sizes())
    bad("prompt_mask must have the shape of prompt_ids");
  if (at::isFloatingType(prompt_ids.scalar_type())) bad("prompt_ids must be an integer tensor");
  // Left padding: decoding appends after the last column, so it must be a real token in every row.
  if (!prompt_mask.select(1, prompt_mask.size(1) - 1).ne(0).all().item<bool>())
    bad("prompts must be left-padded: every row's last prompt_mask column must be 1");
}

at::Generator make_cpu_generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

at::Generator generator_for(const SamplingOptions& options, at::Generator& stream) {
  return options.seed ? make_cpu_generator(*options.seed) : stream;
}

at::Tensor draw_uniforms(int64_t batch, const SamplingOptions& options, at::Generator& generator) {
  if (!options.do_sample) return {};
  return at::rand({batch}, generator, at::TensorOptions().dtype(at::kFloat));
}

at::Tensor is_eos(const at::Tensor& tokens, const SamplingOptions& options) {
  auto done = at::zeros_like(tokens, tokens.options().dtype(at::kBool));
  for (auto id : options.eos_token_ids) done.logical_or_(tokens.eq(id));
  return done;
}

Pick pick_next(const at::Tensor& raw_logits, int64_t step, const SamplingOptions& options,
               const at::Tensor& uniforms) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const bool masks_eos = step < options.min_new_tokens && !options.eos_token_ids.empty();
  if (!options.do_sample && !masks_eos) {
    if (auto [tokens, logprobs] = greedy_pick_decode(raw_logits); tokens.defined()) return {tokens, logprobs};
  }
  auto raw = raw_logits.to(at::kFloat);
  const int64_t vocab = raw.size(1);
  at::Tensor scores = raw;
  if (masks_eos) {
    scores = scores.clone();
    for (auto id : options.eos_token_ids) {
      if (id < vocab) scores.select(1, id).fill_(kNegInf);
    }
  }
  at::Tensor tokens;
  if (!options.do_sample) {
    tokens = scores.argmax(-1);
  } else {
    TORCH_CHECK(uniforms.defined() && uniforms.numel() == raw.size(0), "pick_next: need one uniform per row");
    if (options.temperature != 1.0) scores = scores / options.temperature;
    if (options.top_k > 0 && options.top_k < vocab) {
      auto kth = std::get<0>(scores.topk(options.top_k, -1)).narrow(1, options.top_k - 1, 1);
      scores = scores.masked_fill(scores < kth, kNegInf);
    }
    auto probs = at::softmax(scores, -1);
    if (options.top_p < 1.0) {
      // HF's rule: drop a token when the tokens more likely than it already hold top_p of the mass (the most
      // likely token always stays).
      auto [sorted, order] = probs.sort(-1, /*descending=*/true);
      auto before = sorted.cumsum(-1) - sorted;
      sorted = sorted.masked_fill(before >= options.top_p, 0.0);
      probs = at::zeros_like(probs).scatter(1, order, sorted);
    }
    // Inverse CDF with the row's uniform; right=true never lands on a zero-probability token except through
    // rounding at the very end of the CDF, which falls back to the most likely token.
    auto cdf = probs.cumsum(-1);
    auto target = (uniforms.to(raw.device(), at::kFloat) * cdf.narrow(1, vocab - 1, 1).squeeze(1)).unsqueeze(1);
    tokens = at::searchsorted(cdf, target, /*out_int32=*/false, /*right=*/true).squeeze(1).clamp_max(vocab - 1);
    auto chosen = probs.gather(1, tokens.unsqueeze(1)).squeeze(1);
    tokens = at::where(chosen > 0, tokens, probs.argmax(-1));
  }
  // log_softmax(raw)[token] without materialising the whole [N, V] log_softmax.
  auto logprobs = raw.gather(1, tokens.unsqueeze(1)).squeeze(1) - at::logsumexp(raw, {1});
  return {tokens, logprobs};
}

}  // namespace generation
}  // namespace dschat
