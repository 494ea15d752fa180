// A hook that counts optimizer steps: the smallest useful third-party plugin.
#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

namespace {
class StepCounter : public dschat::Hook {
 public:
  explicit StepCounter(const dschat::ConfigTable& options) : every_(options.get_int("every", 10, 1)) {}
  void after_optimizer_step(torch::nn::Module&, const dschat::HookStepInfo& info) override { last_ = info.step; }

 private:
  int64_t every_;
  int64_t last_ = 0;
};
}  // namespace

DSCHAT_PLUGIN("hello", "0.0.1", "third-party example built against the installed SDK") {
  registrar.add<dschat::Hook>("step-counter", "remembers the last optimizer step",
                              [](const dschat::ConfigTable& o) { return std::make_shared<StepCounter>(o); });
}
