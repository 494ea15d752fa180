// Strategy "single": one process on the CPU or one CUDA device. The engine is the SDK's local engine
// (dschat/sdk/optim.h), which the multi-process strategies extend.
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"

namespace {

class SingleStrategy : public dschat::Strategy {
 public:
  explicit SingleStrategy(const dschat::ConfigTable& options) {
    device_ = dschat::read_device_option(options);
  }

  std::string describe() const override { return "single process, device " + device_; }

  std::unique_ptr<dschat::Engine> make_engine(std::shared_ptr<torch::nn::Module> module,
                                              std::shared_ptr<dschat::CausalLM> lm,
                                              const dschat::OptimizerOptions& options) override {
    if (dschat::world().size() > 1)
      throw std::invalid_argument(
          "strategy \"single\" trains in one process, but the launcher started " +
          std::to_string(dschat::world().size()) + " ranks: use [strategy] plugin = \"ddp\" or \"zero\"");
    const at::Device device = dschat::place_on(device_);
    return dschat::make_local_engine(std::move(module), std::move(lm), options, device,
                                     "single process, " + device.str());
  }

 private:
  std::string device_;  // resolved for this rank in make_engine
};

}  // namespace

DSCHAT_PLUGIN("single", "0.1.0", "one process, CPU or one CUDA device") {
  registrar.add<dschat::Strategy>("single", "one process on the CPU or one CUDA device",
                                  [](const dschat::ConfigTable& options) {
                                    return std::make_shared<SingleStrategy>(options);
                                  });
}
