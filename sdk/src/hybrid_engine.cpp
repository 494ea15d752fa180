#include "dschat/sdk/hybrid_engine.h"

#include <sstream>

#include <ATen/ops/arange.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/log_softmax.h>

#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/linear.h"

namespace dschat {

GenerationView::GenerationView(CausalLM& model, GenerationViewOptions options)
    : model_(model), options_(std::move(options)), was_training_(model.is_training()) {
  if (options_.on_enter) options_.on_enter();
  try {
    at::NoGradGuard no_grad;
    for (auto& module : model_.modules()) {
      auto* linear = dynamic_cast<LoraLinearImpl*>(module.get());
      if (linear == nullptr || !linear->has_lora() || linear->fused()) continue;
      at::Tensor saved = options_.exact_restore ? linear->weight.detach().clone() : at::Tensor();
      linear->fuse();
      fused_.emplace_back(linear, std::move(saved));
    }
  } catch (...) {
    for (auto& [linear, saved] : fused_) linear->unfuse();
    if (options_.on_exit) options_.on_exit();
    throw;
  }
  model_.eval();
  grad_mode_ = std::make_unique<at::AutoGradMode>(false);
}

GenerationView::~GenerationView() {
  grad_mode_.reset();
  model_.train(was_training_);
  at::NoGradGuard no_grad;
  for (auto it = fused_.rbegin(); it != fused_.rend(); ++it) {
    it->first->unfuse();
    if (it->second.defined()) it->first->weight.copy_(it->second);
  }
  fused_.clear();
  if (options_.on_exit) {
    try {
      options_.on_exit();
    } catch (...) {  // a destructor must not throw; the strategy reports its own failures
    }
  }
}

LogprobAgreement logprob_agreement(CausalLM& model, const at::Tensor& sequences, const at::Tensor& attention_mask,
                                   int64_t answer_start, const at::Tensor& generation_logprobs, int64_t sample_rows) {
  TORCH_CHECK(sequences.dim() == 2 && attention_mask.sizes() == sequences.sizes(),
              "logprob_agreement: sequences and attention_mask must both be [B, P + T], got ", sequences.sizes(),
              " and ", attention_mask.sizes());
  const int64_t batch = sequences.size(0), total = sequences.size(1);
  TORCH_CHECK(answer_start >= 1 && answer_start < total, "logprob_agreement: answer_start ", answer_start,
              " must lie in [1, ", total, ")");
  const int64_t answer_len = total - answer_start;
  TORCH_CHECK(generation_logprobs.dim() == 2 && generation_logprobs.size(0) == batch &&
                  generation_logprobs.size(1) == answer_len,
              "logprob_agreement: generation_logprobs must be [", batch, ", ", answer_len, "], got ",
              generation_logprobs.sizes());
  const auto device = model.device();
  auto rows = (sample_rows <= 0 || sample_rows >= batch)
                  ? at::arange(batch, at::TensorOptions().dtype(at::kLong))
                  : at::linspace(0, static_cast<double>(batch - 1), sample_rows).round().to(at::kLong);
  rows = rows.to(device);
  auto ids = sequences.to(device, at::kLong).index_select(0, rows);
  auto mask = attention_mask.to(device, at::kLong).index_select(0, rows);

  const bool was_training = model.is_training();
  model.eval();
  at::Tensor recomputed;
  try {
    at::NoGradGuard no_grad;
    // Token t is predicted at position t - 1: run the LM head on the answer-predicting positions only.
    auto hidden = model.forward(ids, mask, nullptr, /*return_hidden=*/true, /*return_logits=*/false).hidden;
    auto logits = model.lm_logits(hidden.narrow(1, answer_start - 1, answer_len)).to(at::kFloat);
    auto targets = ids.narrow(1, answer_start, answer_len);
    recomputed = at::log_softmax(logits, -1).gather(2, targets.unsqueeze(2)).squeeze(2);
  } catch (...) {
    model.train(was_training);
    throw;
  }
  model.train(was_training);
  auto given = generation_logprobs.to(device, at::kFloat).index_select(0, rows);
  auto answer_mask = mask.narrow(1, answer_start, answer_len).ne(0);
  if (!answer_mask.any().item<bool>()) return {};
  auto diffs = (recomputed - given).abs().masked_select(answer_mask);
  return {diffs.max().item<double>(), diffs.mean().item<double>()};
}

double logprob_consistency(CausalLM& model, const at::Tensor& sequences, const at::Tensor& attention_mask,
                           int64_t answer_start, const at::Tensor& generation_logprobs, int64_t sample_rows) {
  return logprob_agreement(model, sequences, attention_mask, answer_start, generation_logprobs, sample_rows)
      .max_abs_diff;
}

double check_consistency(CausalLM& model, const at::Tensor& sequences, const at::Tensor& attention_mask,
                         int64_t answer_start, const at::Tensor& generation_logprobs, int64_t sample_rows,
                         double threshold) {
  const double diff =
      logprob_consistency(model, sequences, attention_mask, answer_start, generation_logprobs, sample_rows);
  if (!(diff <= threshold)) {
    std::ostringstream message;
    message << "hybrid engine: generation and training log-probs disagree: max |difference| " << diff
            << " > threshold " << threshold
            << " over the sampled rows. The generation path (fused LoRA, KV cache, positions, masks) does not "
               "compute the model the training path computes; PPO's old log-probs would be wrong.";
    throw ConsistencyError(message.str());
  }
  return diff;
}

}  // namespace dschat
