// Strategy "single": one process on the CPU or one CUDA device. The engine is the SDK's local engine
// (dschat/sdk/optim.h), which the multi-process strategies extend.
#include <ATen/Context.h>

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"

namespace {

class SingleStrategy : public dschat::Strategy {
 public:
  explicit SingleStrategy(const dschat::ConfigTable& options) {
    // "auto": the first CUDA device when LibTorch sees one, else the CPU.
    auto device = options.get_choice("device", {"auto", "cpu", "cuda"}, "auto");
    if (device == "cuda" && !at::hasCUDA()) options.fail("device", "\"cuda\" asked for, but no CUDA device is visible");
    cuda_ = device == "cuda" || (device == "auto" && at::hasCUDA());
  }

  std::string describe() const override { return cuda_ ? "single process, cuda:0" : "single process, cpu"; }

  std::unique_ptr<dschat::Engine> make_engine(std::shared_ptr<torch::nn::Module> module,
                                              std::shared_ptr<dschat::CausalLM> lm,
                                              const dschat::OptimizerOptions& options) override {
    if (dschat::world().size() > 1)
      throw std::invalid_argument(
          "strategy \"single\" trains in one process, but the launcher started " +
          std::to_string(dschat::world().size()) + " ranks: use [strategy] plugin = \"ddp\" or \"zero\"");
    return dschat::make_local_engine(std::move(module), std::move(lm), options,
                                     cuda_ ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU), describe());
  }

 private:
  bool cuda_ = false;
};

}  // namespace

DSCHAT_PLUGIN("single", "0.1.0", "one process, CPU or one CUDA device") {
  registrar.add<dschat::Strategy>("single", "one process on the CPU or one CUDA device",
                                  [](const dschat::ConfigTable& options) {
                                    return std::make_shared<SingleStrategy>(options);
                                  });
}
