// Strategy "ddp": data parallel over every rank the launcher started. Each rank keeps the whole model and
// optimizer; gradients are all-reduced per block (one bucket each) while backward still runs on the blocks
// below. The engine is the SDK's partitioned engine at stage 0 (dschat/sdk/partitioned_engine.h).
#include <fmt/format.h>

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/partitioned_engine.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"

namespace {

class DdpStrategy : public dschat::Strategy {
 public:
  explicit DdpStrategy(const dschat::ConfigTable& options) {
    device_ = dschat::read_device_option(options);
  }

  std::string describe() const override { return "ddp, device " + device_; }

  // The partitioned engine at stage 0: an fp32 master and fp32 gradients (reduced in fp32) on every rank.
  dschat::StatePlacement state_placement(int64_t) const override {
    dschat::StatePlacement p;
    p.fp32_master_weights = true;
    p.fp32_gradients = true;
    p.gradient_buckets = 3;  // two in flight and the one being filled
    return p;
  }

  std::unique_ptr<dschat::Engine> make_engine(std::shared_ptr<torch::nn::Module> module,
                                              std::shared_ptr<dschat::CausalLM> lm,
                                              const dschat::OptimizerOptions& options) override {
    const at::Device device = dschat::place_on(device_);
    return dschat::make_partitioned_engine(std::move(module), std::move(lm), options, device, {/*zero_stage=*/0},
                                           device.str());
  }

 private:
  std::string device_;  // resolved for this rank in make_engine
};

}  // namespace

DSCHAT_PLUGIN("ddp", "0.1.0", "data parallel: whole model per rank, gradients all-reduced during backward") {
  registrar.add<dschat::Strategy>("ddp", "data parallel, bucketed gradient all-reduce overlapped with backward",
                                  [](const dschat::ConfigTable& options) {
                                    return std::make_shared<DdpStrategy>(options);
                                  });
}
