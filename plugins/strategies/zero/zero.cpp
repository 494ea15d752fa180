// Strategy "zero": ZeRO stages 1-3 (DeepSpeed's), optionally with the optimizer offloaded to host memory.
//
//   [strategy]
//   plugin = "zero"
//   stage = 3                  # 1: optimizer states partitioned, 2: + gradients, 3: + parameters
//   offload_optimizer = true   # fp32 master weights and Adam moments in host memory, stepped by CPU Adam
//   offload_parameters = true  # stage 3: the weight slices in host memory too
//   prefetch = true            # stage 3: gather block i+1 while block i runs
//
// At stage 3 the stage's frozen models (reference, reward) have their blocks sharded over the ranks as well
// (dschat/sdk/frozen_model.h), gathered one block at a time as they run.
// The engine is the SDK's partitioned engine (dschat/sdk/partitioned_engine.h), shared with `ddp`.
#include <fmt/format.h>

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/partitioned_engine.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"

namespace {

class ZeroStrategy : public dschat::Strategy {
 public:
  explicit ZeroStrategy(const dschat::ConfigTable& options) {
    partitioning_.zero_stage = static_cast<int>(options.get_int("stage", 2, 1, 3));
    partitioning_.offload_optimizer = options.get_bool("offload_optimizer", false);
    partitioning_.offload_parameters = options.get_bool("offload_parameters", false);
    if (partitioning_.offload_parameters && partitioning_.zero_stage != 3)
      options.fail("offload_parameters", "needs stage = 3 (only then are the weights partitioned)");
    partitioning_.prefetch = options.get_bool("prefetch", true);
    device_ = dschat::read_device_option(options);
  }

  std::string describe() const override {
    return fmt::format("zero stage {}{}{}, device {}", partitioning_.zero_stage,
                       partitioning_.offload_optimizer ? " + offload" : "",
                       partitioning_.offload_parameters ? " + parameter offload" : "", device_);
  }

  dschat::StatePlacement state_placement(int64_t world_size) const override {
    dschat::StatePlacement p;
    const int stage = partitioning_.zero_stage;
    p.optimizer_shards = world_size;
    p.gradient_shards = stage >= 2 ? world_size : 1;
    p.parameter_shards = stage == 3 ? world_size : 1;
    p.optimizer_on_host = partitioning_.offload_optimizer;
    p.parameters_on_host = partitioning_.offload_parameters;
    p.fp32_master_weights = true;
    p.fp32_gradients = true;
    p.recompute_blocks = stage == 3;
    p.gradient_buckets = 3;  // two in flight and the one being filled
    p.gathered_blocks = stage == 3 ? (partitioning_.prefetch ? 2 : 1) : 0;
    p.frozen_block_shards = stage == 3 ? world_size : 1;  // place_frozen_model below
    return p;
  }

  // Stage 3 partitions the frozen models too, as DeepSpeed-Chat's reference and reward models under ZeRO-3.
  std::string place_frozen_model(dschat::CausalLM& model, at::Device device,
                                 const dschat::FrozenPlacement& placement) override {
    return dschat::place_frozen_blocks(model, device, placement,
                                       partitioning_.zero_stage == 3 ? &dschat::world() : nullptr);
  }

  std::unique_ptr<dschat::Engine> make_engine(std::shared_ptr<torch::nn::Module> module,
                                              std::shared_ptr<dschat::CausalLM> lm,
                                              const dschat::OptimizerOptions& options) override {
    const at::Device device = dschat::place_on(device_);
    return dschat::make_partitioned_engine(std::move(module), std::move(lm), options, device, partitioning_,
                                           device.str());
  }

 private:
  dschat::PartitionedEngineOptions partitioning_;
  std::string device_;  // resolved for this rank in make_engine
};

}  // namespace

DSCHAT_PLUGIN("zero", "0.1.0", "ZeRO stages 1-3 with optional optimizer offload") {
  registrar.add<dschat::Strategy>("zero", "ZeRO: optimizer states (1), + gradients (2), + parameters (3) partitioned",
                                  [](const dschat::ConfigTable& options) {
                                    return std::make_shared<ZeroStrategy>(options);
                                  });
}
