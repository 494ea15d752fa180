#pragma once
// The end of an RL stage that trains an actor: the hooks' on_train_end on rank 0 with the weights gathered (the
// `ema` hook writes stage_dir/ema), the EMA evaluated through `evaluate_ema` when it was written, then
// stage_dir/final: the actor as an HF folder with its tokenizer (rank 0). Collective: every rank calls it.
#include <functional>

#include "dschat/sdk/export.h"

namespace dschat {

class CausalLM;
class Communicator;
class Engine;
class StageContext;
class Tokenizer;
struct ModelHandle;

namespace rlhf {

DSCHAT_SDK_API void finish_actor_stage(StageContext& context, CausalLM& actor, Engine& engine,
                                       const ModelHandle& handle, const Tokenizer& tokenizer,
                                       const std::function<void(CausalLM&)>& evaluate_ema, Communicator& comm);

}  // namespace rlhf
}  // namespace dschat
