#pragma once
// Models a stage only runs forward (PPO's reference and reward models, DPO's reference), placed as the stage's
// strategy says (Strategy::place_frozen_model). DeepSpeed-Chat initialises them through DeepSpeed too: under
// ZeRO-3 their weights are partitioned over the ranks, and --offload_reference_model keeps them in host memory.
//
//   strategy.place_frozen_model(*reference, engine->device(), {.offload = o.offload_reference_model});
//   reference->forward(ids, mask);   // unchanged for the caller; collective when the blocks are sharded
//
// The embeddings, final norm and head stay whole on the device; each transformer block's weights are flattened
// into one buffer. Sharded, every rank keeps its contiguous slice of that buffer and all-gathers the whole block
// just before it runs, freeing it right after (CausalLM::set_block_runner). Offloaded, the slice (or, unsharded,
// the whole block) lives in host memory and is copied to the device for the block's run; on a CPU run the host
// is the device and offloading changes nothing.
#include <string>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

class CausalLM;
class Communicator;

struct FrozenPlacement {
  bool offload = false;  // block weights in host memory, copied to the device block by block
};

// Places `model` (frozen: no parameter is trained through it afterwards) on `device`, its blocks sharded over
// `shard_over` when that is given and has more than one rank (every rank of it must call this, and every forward
// pass is then collective over it). Returns how it was placed, for the stage's log ("blocks sharded over 2 ranks,
// in host memory").
DSCHAT_SDK_API std::string place_frozen_blocks(CausalLM& model, at::Device device, const FrozenPlacement& placement,
                                               Communicator* shard_over = nullptr);

}  // namespace dschat
