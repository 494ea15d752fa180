#include "dschat/sdk/rlhf/rollout.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <chrono>
#include <stdexcept>

#include <fmt/format.h>

#include "dschat/sdk/device.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/hybrid_engine.h"
#include "dschat/sdk/metrics.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/ppo_math.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tensor_parallel.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat::rlhf {

int64_t rollout_pad_id(const Tokenizer& tokenizer) {
  auto pad = tokenizer.eos_id() ? tokenizer.eos_id() : tokenizer.pad_id();
  if (!pad) throw std::invalid_argument("the actor's tokenizer has neither a pad nor an eos token");
  return *pad;
}

SamplingOptions rollout_sampling(const Generator& generator, const Tokenizer& tokenizer, int64_t pad_id) {
  SamplingOptions s = generator.defaults();
  s.eos_token_ids = {tokenizer.eos_id().value_or(pad_id)};
  s.pad_token_id = pad_id;
  return s;
}

at::Tensor experience_mask(const at::Tensor& seq, int64_t pad_id) { return seq.ne(pad_id).to(at::kLong); }

at::Tensor rows_to_keep(const at::Tensor& seq, int64_t prompt_length, int64_t pad_id) {
  return (seq.slice(1, prompt_length).ne(pad_id).sum(1) > 1).nonzero().squeeze(1);
}

void trim_left_padding(at::Tensor& ids, at::Tensor& mask) {
  auto any = mask.sum(0).gt(0).nonzero();
  if (any.numel() == 0) return;
  const int64_t first = any[0][0].item<int64_t>();
  ids = ids.slice(1, first);
  mask = mask.slice(1, first);
}

PromptBatch rollout_prompts(const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices,
                            int64_t max_prompt_seq_len, int64_t pad_id, bool trim, int64_t copies) {
  TORCH_CHECK(copies >= 1, "rollout_prompts: copies must be >= 1, got ", copies);
  std::vector<const TokenizedExample*> rows;
  rows.reserve(indices.size() * static_cast<size_t>(copies));
  for (auto i : indices)
    for (int64_t c = 0; c < copies; ++c) rows.push_back(&set.at(static_cast<size_t>(i)));
  PromptBatch batch = collate_prompts(rows, max_prompt_seq_len, pad_id);
  if (trim) trim_left_padding(batch.input_ids, batch.attention_mask);
  return batch;
}

at::Tensor pad_front(const at::Tensor& per_token, int64_t from) {
  return from == 0 ? per_token : at::cat({at::zeros({per_token.size(0), from}, per_token.options()), per_token}, 1);
}

at::Tensor frozen_answer_logprobs(CausalLM& model, const at::Tensor& seq, const at::Tensor& mask, int64_t from) {
  auto hidden = model.forward(seq, mask, nullptr, /*return_hidden=*/true, /*return_logits=*/false).hidden;
  auto logits = model.lm_logits(hidden.narrow(1, from, hidden.size(1) - 1 - from));
  return pad_front(ppo::logprobs_from_logits(logits, seq.slice(1, from + 1)).to(at::kFloat), from);
}

RolloutCollector::RolloutCollector(RolloutOptions options, CausalLM& actor, Engine& actor_engine,
                                   const ModelFamily& family, Generator& generator, Communicator& comm)
    : o_(std::move(options)), actor_(actor), engine_(actor_engine), family_(family), generator_(generator),
      comm_(comm) {
  TORCH_CHECK(o_.inference_tp_size >= 1 && comm.size() % o_.inference_tp_size == 0, "stage ", o_.stage,
              ": inference_tp_size ", o_.inference_tp_size, " does not divide the ", comm.size(), " ranks");
  if (o_.tensor_parallel && o_.inference_tp_size < comm.size())
    mesh_ = std::make_unique<Mesh>(make_mesh(comm, comm.size() / static_cast<int>(o_.inference_tp_size),
                                             static_cast<int>(o_.inference_tp_size)));
}

RolloutCollector::~RolloutCollector() = default;

GenerationResult RolloutCollector::generate(CausalLM& model, const PromptBatch& prompts,
                                            const SamplingOptions& sampling) {
  const at::Device device = engine_.device();
  GenerationView view(model);
  return generator_.generate(model, prompts.input_ids.to(device), prompts.attention_mask.to(device), sampling);
}

// Every rank of a TP group decodes the group's prompts (left-padded to the longest), in lockstep, and keeps its
// rows. The shard copies what generation would see: LoRA fused, under the view.
GenerationResult RolloutCollector::generate_tensor_parallel(const PromptBatch& prompts,
                                                            const SamplingOptions& sampling) {
  Communicator& group = mesh_ && mesh_->tp ? *mesh_->tp : comm_;
  const at::Device device = engine_.device();
  GenerationView view(actor_);
  if (!tp_shard_) {
    tp_shard_ = make_tensor_parallel_shard(family_, actor_, group);
  } else {
    refresh_tensor_parallel_shard(*tp_shard_, family_, actor_);
  }
  tp_shard_->eval();
  const int64_t rows = prompts.input_ids.size(0);
  const auto P = static_cast<int64_t>(group.max(static_cast<double>(prompts.input_ids.size(1))));
  TORCH_CHECK(static_cast<int64_t>(group.max(static_cast<double>(rows))) == rows,
              "TP rollouts need the same number of prompts on every rank of a TP group");
  auto left_pad = [&](const at::Tensor& t, int64_t value) {
    return at::cat({at::full({rows, P - t.size(1)}, value, t.options()), t}, 1).contiguous();
  };
  at::Tensor ids = left_pad(prompts.input_ids.to(device), o_.pad_id);
  at::Tensor mask = left_pad(prompts.attention_mask.to(device), 0);
  at::Tensor all_ids = at::empty({rows * group.size(), P}, ids.options());
  at::Tensor all_mask = at::empty({rows * group.size(), P}, mask.options());
  group.all_gather(all_ids, ids);
  group.all_gather(all_mask, mask);
  GenerationResult all = generator_.generate(*tp_shard_, all_ids, all_mask, sampling);
  GenerationResult mine;
  const int64_t first = group.rank() * rows;
  mine.prompt_length = all.prompt_length;
  mine.sequences = all.sequences.narrow(0, first, rows).contiguous();
  mine.attention_mask = all.attention_mask.narrow(0, first, rows).contiguous();
  mine.answer_mask = all.answer_mask.narrow(0, first, rows).contiguous();
  mine.logprobs = all.logprobs.narrow(0, first, rows).contiguous();
  return mine;
}

Rollout RolloutCollector::collect(const PromptBatch& prompts, const SamplingOptions& sampling, MetricsSink& metrics,
                                  int64_t step, int64_t rollout) {
  using Clock = std::chrono::steady_clock;
  const at::Device device = engine_.device();
  Rollout r;
  auto t0 = Clock::now();
  // The hybrid engine: under ZeRO-3 the actor is gathered once for the rollout (not per token or block) and
  // released after the consistency check.
  auto whole = engine_.gather_parameters();
  if (o_.tensor_parallel) {
    r.generated = generate_tensor_parallel(prompts, sampling);
  } else {
    r.generated = generate(actor_, prompts, sampling);
  }
  synchronize(device);  // on a GPU the host runs ahead of the kernels it launched
  r.generation_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const GenerationResult& out = r.generated;
  const auto t1 = Clock::now();
  auto gen_logprobs = out.logprobs;
  if (o_.debug_corrupt_generation_logprobs != 0.0)
    gen_logprobs = (gen_logprobs + o_.debug_corrupt_generation_logprobs) * out.answer_mask.to(at::kFloat);
  const auto agreement = logprob_agreement(actor_, out.sequences, out.attention_mask, out.prompt_length,
                                           gen_logprobs, o_.consistency_sample_rows);
  whole.reset();
  synchronize(device);
  r.consistency_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  r.max_abs_diff = agreement.max_abs_diff;
  r.mean_abs_diff = agreement.mean_abs_diff;
  metrics.scalar("consistency/max_abs_diff", agreement.max_abs_diff, step);
  metrics.scalar("consistency/mean_abs_diff", agreement.mean_abs_diff, step);
  metrics.scalar("time/consistency_s", r.consistency_seconds, step);
  const double diff = o_.consistency_mean ? agreement.mean_abs_diff : agreement.max_abs_diff;
  if (!(diff <= o_.consistency_threshold))
    throw ConsistencyError(fmt::format(
        "stage {}: rollout {}: the generation path's log-probs differ from the training path's by {:.3g} ({} "
        "over the compared tokens; consistency_threshold {:.3g}); the hybrid engine's generation view or the "
        "generation plugin computes a different model than training does (LoRA fusion, cache, positions, masks "
        "or dtype)",
        o_.stage, rollout, diff, o_.consistency_mean ? "mean" : "largest", o_.consistency_threshold));
  return r;
}

}  // namespace dschat::rlhf
