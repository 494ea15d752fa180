// Strategy "tp": Megatron tensor parallelism as the generation layout of the hybrid engine. Every rank of the run
// holds a shard of the actor (dschat/sdk/tensor_parallel.h: column-parallel q/k/v/fc1, row-parallel
// out_proj/fc2 with an all-reduce, a vocab-parallel head with an all-gather) and runs the same decoding loop, so
// a rollout's tokens are those of the whole model.
//
// Training is not tensor-parallel here: make_engine refuses with a pointer to the data-parallel strategies, whose
// gathered actor (Engine::gather_parameters) make_tensor_parallel_shard / refresh_tensor_parallel_shard re-shard
// for each rollout.
#include <algorithm>
#include <stdexcept>

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"

namespace {

class TensorParallelStrategy : public dschat::Strategy {
 public:
  explicit TensorParallelStrategy(const dschat::ConfigTable& options) {
    // The world the launcher started (its variables), not the process group: the pipeline is validated before
    // the group exists, so `torchrun ... dschat validate` checks the layout against the real rank count.
    int64_t world = dschat::world().size();
    try {
      world = std::max<int64_t>(world, dschat::detect_launch_environment().world_size);
    } catch (const std::invalid_argument&) {  // inconsistent variables: the rendezvous reports them
    }
    tp_size_ = options.get_int("tp_size", world, 1);
    // One group, the whole run. TP x DP rollouts are PPO's inference_tp_size under a data-parallel strategy.
    if (tp_size_ != world) {
      options.fail("tp_size", "must equal the number of ranks the launcher started (" + std::to_string(world) +
                                  "): this strategy spans the whole run; for TP groups of fewer ranks use a "
                                  "data-parallel strategy and the ppo stage's inference_tp_size");
    }
  }

  std::string describe() const override {
    return "tensor parallel over " + std::to_string(tp_size_) + " rank" + (tp_size_ == 1 ? "" : "s") +
           " (generation), " + dschat::world().backend();
  }

  std::unique_ptr<dschat::Engine> make_engine(std::shared_ptr<torch::nn::Module>, std::shared_ptr<dschat::CausalLM>,
                                              const dschat::OptimizerOptions&) override {
    throw std::runtime_error(
        "strategy 'tp' lays the actor out for generation only; tensor-parallel training is not implemented. Train "
        "with 'single' (one process) or a data-parallel strategy (ddp, zero) and let the hybrid engine re-shard "
        "the actor for rollouts (dschat/sdk/tensor_parallel.h)");
  }

 private:
  int64_t tp_size_ = 1;
};

}  // namespace

DSCHAT_PLUGIN("tp", "0.1.0", "Megatron tensor parallelism for generation (the hybrid engine's rollout layout)") {
  registrar.add<dschat::Strategy>("tp", "tensor-parallel generation layout; option tp_size (default: world size)",
                                  [](const dschat::ConfigTable& options) {
                                    return std::make_shared<TensorParallelStrategy>(options);
                                  });
}
