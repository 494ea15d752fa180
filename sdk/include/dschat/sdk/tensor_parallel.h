#pragma once
// Megatron tensor parallelism for generation: every rank of a group holds a shard of the actor, laid out by the
// family's tensor_parallel_spec, and runs the same decoding loop on the same prompts.
//
//   auto shard = make_tensor_parallel_shard(family, actor, dschat::world());   // once
//   for (each rollout) {
//     refresh_tensor_parallel_shard(*shard, family, actor);                   // after the training steps
//     auto out = generator.generate(*shard, prompts, mask, options);          // identical on every rank
//   }
//
// A shard is the same family's model with
//   - rows-split parameters (column-parallel q/k/v/fc1/gate/up and their biases, a vocab-parallel lm_head)
//     sliced along dim 0 and columns-split ones (row-parallel out_proj/fc2/down/dense) along dim 1;
//   - num_heads / size (and num_kv_heads / size) local heads per attention layer, starting at
//     rank * num_heads / size; BLOOM's fused query_key_value rows are head-major, so its row slice is whole heads,
//     and the ALiBi bias keeps the global heads' slopes;
//   - row-parallel linears that sum their partial products across the group (all-reduce) before the replicated
//     bias, and a vocab-parallel head that all-gathers its logits: every rank sees the whole model's hidden
//     states and logits, bit-identical across ranks, so decoding decisions (argmax, eos) agree everywhere.
// Shards are inference-only by default: their parameters do not require grad and the collectives are not
// differentiable. A trainable shard (TensorParallelShardOptions::trainable, what the `tp` strategy trains) runs
// Megatron's conjugate operators instead: a column-parallel layer's input passes unchanged forward and has its
// gradient summed across the group backward ("f"); a row-parallel layer's all-reduce passes the gradient unchanged
// ("g"); the vocab-parallel head's all-gather hands each rank its own slice of the logits' gradient. Every rank
// of the group then holds the whole gradient of each replicated parameter (norms, embeddings, biases after an
// all-reduce) and its slice of each split one, so an optimizer over the shard needs no further collective.
#include <memory>

#include "dschat/sdk/export.h"

namespace dschat {

class CausalLM;
class Communicator;
class ModelFamily;

// Builds this rank's shard of `full` (a model of `family`, not a shard itself) over `group` and copies its
// slices in (LoRA adapters folded in). The shard lives on full's device, in full's dtype, and keeps a reference
// to `group`, which must outlive it. A dimension the group size does not divide (attention heads, key/value
// heads, the feed-forward width, the vocabulary of a split head) is an error naming it. Every rank of the group
// must call this (no collective runs here, but the shards are only useful together).
struct TensorParallelShardOptions {
  // Parameters require grad where full's do, and the collectives are differentiable (see above). LoRA adapters
  // are refused here: they would be folded into the slices and lost to training.
  bool trainable = false;
};
DSCHAT_SDK_API std::shared_ptr<CausalLM> make_tensor_parallel_shard(const ModelFamily& family, CausalLM& full,
                                                                    Communicator& group,
                                                                    const TensorParallelShardOptions& options = {});

// The checks make_tensor_parallel_shard starts with, on their own: that `full` (a model of `family`, weights
// not needed: a model built untouched will do) can be cut over `size` ranks. Throws c10::Error naming what does
// not divide; `dschat validate` and `run` call it per trained model before any work starts.
DSCHAT_SDK_API void check_tensor_parallel_layout(const ModelFamily& family, const CausalLM& full, int64_t size,
                                                 const TensorParallelShardOptions& options = {});

// Copies this rank's slices of `full`'s current weights into `shard` (in place; LoRA folded in whether or not
// it is fused), e.g. at the start of every rollout. `full` must be the model (or an identically shaped one) the
// shard was made from.
DSCHAT_SDK_API void refresh_tensor_parallel_shard(CausalLM& shard, const ModelFamily& family, CausalLM& full);

// The reverse of refresh_tensor_parallel_shard: every rank of `group` (the shard's) all-gathers the slices of
// the split parameters and copies them, with the replicated ones, into `full`, so that full holds the weights the
// group trained (export, hooks, rollouts). Collective over the group.
DSCHAT_SDK_API void gather_tensor_parallel_shard(CausalLM& shard, const ModelFamily& family, CausalLM& full,
                                                 Communicator& group);

}  // namespace dschat
