#pragma once
// The multi-process engine behind the `ddp` and `zero` strategy plugins: one implementation for DDP and ZeRO
// stages 1-3, as DeepSpeed has one engine for all stages.
//
// The trainable parameters are grouped into units: one per transformer block, one for the rest of the LM
// (embeddings, final norm, head) and one for parameters outside the LM (a value head; ZeRO-3 keeps this small
// one whole, like DeepSpeed's persistence threshold). Each unit is flattened and padded to a multiple of the
// world size; rank r owns the r-th contiguous slice of every unit:
//
//   stage 0 (DDP)  every rank owns everything; each unit's gradients are all-reduced as soon as backward has
//                  produced them (one bucket per unit, overlapped with the rest of backward)
//   stage 1        fp32 master weights and Adam moments exist only for the owned slice; gradients all-reduced;
//                  after the step the updated slices are all-gathered into the weights
//   stage 2        + gradients reduce-scattered per unit during backward (every micro-step): a rank keeps only
//                  its slice of them
//   stage 3        + weights partitioned: a block's weights are all-gathered just before it runs and freed right
//                  after (the next block's gather is started early); in backward the block is recomputed, so the
//                  gather happens again there, then its gradients are reduce-scattered and the weights freed
//
// offload_optimizer keeps master weights and moments in host memory and steps them with the vectorised CPU Adam
// (on a CPU run that changes only the kernel). The gradient all-reduce assumes every rank's backward touches the
// same parameters in the same order (no data-dependent unused parameters).
#include <cstdint>
#include <memory>
#include <string>

#include "dschat/sdk/export.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

struct PartitionedEngineOptions {
  int zero_stage = 0;              // 0 = DDP
  bool offload_optimizer = false;  // master weights + moments in host memory, CPU Adam
  bool prefetch = true;            // stage 3: start gathering block i+1 while block i runs
};

DSCHAT_SDK_API std::unique_ptr<Engine> make_partitioned_engine(std::shared_ptr<torch::nn::Module> module,
                                                               std::shared_ptr<CausalLM> lm,
                                                               const OptimizerOptions& options, at::Device device,
                                                               const PartitionedEngineOptions& partitioning,
                                                               std::string strategy_description);

}  // namespace dschat
