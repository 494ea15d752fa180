// Strategy "zero": ZeRO stages 1-3 (DeepSpeed's), optionally with the optimizer offloaded to host memory.
//
//   [strategy]
//   plugin = "zero"
//   stage = 3                  # 1: optimizer states partitioned, 2: + gradients, 3: + parameters
//   offload_optimizer = true   # fp32 master weights and Adam moments in host memory, stepped by CPU Adam
//   prefetch = true            # stage 3: gather block i+1 while block i runs
//
// The engine is the SDK's partitioned engine (dschat/sdk/partitioned_engine.h), shared with `ddp`.
#include <ATen/Context.h>

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
    partitioning_.prefetch = options.get_bool("prefetch", true);
    auto device = options.get_choice("device", {"auto", "cpu", "cuda"}, "auto");
    if (device == "cuda" && !at::hasCUDA()) options.fail("device", "\"cuda\" asked for, but no CUDA device is visible");
    cuda_ = device == "cuda" || (device == "auto" && at::hasCUDA());
  }

  std::string describe() const override {
    return fmt::format("zero stage {}{}, {}", partitioning_.zero_stage,
                       partitioning_.offload_optimizer ? " + offload" : "", cuda_ ? "cuda" : "cpu");
  }

  std::unique_ptr<dschat::Engine> make_engine(std::shared_ptr<torch::nn::Module> module,
                                              std::shared_ptr<dschat::CausalLM> lm,
                                              const dschat::OptimizerOptions& options) override {
    const int local_rank = dschat::launch_environment().local_rank;
    at::Device device = cuda_ ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank)) : at::Device(at::kCPU);
    return dschat::make_partitioned_engine(std::move(module), std::move(lm), options, device, partitioning_,
                                           device.str());
  }

 private:
  dschat::PartitionedEngineOptions partitioning_;
  bool cuda_ = false;
};

}  // namespace

DSCHAT_PLUGIN("zero", "0.1.0", "ZeRO stages 1-3 with optional optimizer offload") {
  registrar.add<dschat::Strategy>("zero", "ZeRO: optimizer states (1), + gradients (2), + parameters (3) partitioned",
                                  [](const dschat::ConfigTable& options) {
                                    return std::make_shared<ZeroStrategy>(options);
                                  });
}
