#include "dschat/sdk/rlhf/stage_outputs.h"

#include <filesystem>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat::rlhf {

void finish_actor_stage(StageContext& context, CausalLM& actor, Engine& engine, const ModelHandle& handle,
                        const Tokenizer& tokenizer, const std::function<void(CausalLM&)>& evaluate_ema,
                        Communicator& comm) {
  // The EMA is the same on every rank; rank 0 writes it, the others wait before reading it back.
  {
    auto whole = engine.gather_parameters();
    if (comm.is_main())
      for (const auto& hook : context.hooks()) hook->on_train_end(actor, context.stage_dir());
  }
  comm.barrier();
  const std::filesystem::path ema_dir = context.stage_dir() / "ema";
  if (evaluate_ema && std::filesystem::exists(ema_dir / "config.json")) {
    auto ema = handle.family->from_pretrained(ema_dir, handle.options);
    ema->to(engine.device());
    evaluate_ema(*ema);
  }
  auto whole = engine.gather_parameters();
  if (!comm.is_main()) return;
  const std::filesystem::path final_dir = context.stage_dir() / "final";
  handle.family->export_hf(actor, final_dir);
  tokenizer.save(final_dir);
}

}  // namespace dschat::rlhf
