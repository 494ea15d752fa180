// A well-formed plugin: one hook and one algorithm, with options read through ConfigTable.
#include <stdexcept>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/plugin.h"

namespace {

class CountingHook : public dschat::Hook {
 public:
  explicit CountingHook(const dschat::ConfigTable& options) : every_(options.get_int("every", 1, 1)) {}
  int64_t every() const { return every_; }

 private:
  int64_t every_;
};

class FailingAlgorithm : public dschat::Algorithm {
 public:
  explicit FailingAlgorithm(const dschat::ConfigTable& options)
      : model_(options.get_string("model")), fail_roles_(options.get_bool("fail_roles", false)) {}
  std::map<std::string, std::string> model_roles() const override {
    if (fail_roles_) throw std::runtime_error("deliberate failure inside model_roles()");
    return {{"model", model_}};
  }
  void run(dschat::StageContext&) override { throw std::runtime_error("deliberate failure inside run()"); }

 private:
  std::string model_;
  bool fail_roles_;
};

class NamedStrategy : public dschat::Strategy {
 public:
  explicit NamedStrategy(const dschat::ConfigTable& options)
      : stage_(options.get_int("stage", 0, 0, 3)), offload_(options.get_choice("offload", {"none", "optimizer"}, "none")) {}
  std::string describe() const override { return "test stage " + std::to_string(stage_) + " offload " + offload_; }

 private:
  int64_t stage_;
  std::string offload_;
};

// Accepts config.json files whose model_type is "test-lm"; building a network is not what these tests check.
class TestFamily : public dschat::ModelFamily {
 public:
  std::string model_type() const override { return "test-lm"; }
  std::shared_ptr<dschat::CausalLM> build(const nlohmann::json&, const dschat::ModelOptions&) const override {
    throw std::runtime_error("test-lm builds no network");
  }
  std::vector<std::string> lora_target_modules() const override { return {}; }
  std::vector<std::pair<std::string, dschat::TensorSplit>> tensor_parallel_spec(
      const dschat::CausalLM&) const override {
    return {};
  }
  std::string base_model_prefix() const override { return "model"; }
};

}  // namespace

DSCHAT_PLUGIN("test-good", "1.2.3", "registry test: a well-formed plugin") {
  registrar.add<dschat::Hook>("counting", "counts steps",
                              [](const dschat::ConfigTable& o) { return std::make_shared<CountingHook>(o); });
  registrar.add<dschat::Algorithm>("failing", "throws from run()",
                                   [](const dschat::ConfigTable& o) { return std::make_shared<FailingAlgorithm>(o); });
  registrar.add<dschat::Strategy>("test-strategy", "describes itself",
                                  [](const dschat::ConfigTable& o) { return std::make_shared<NamedStrategy>(o); });
  registrar.add<dschat::ModelFamily>("test-lm", "config-only model family",
                                     [](const dschat::ConfigTable&) { return std::make_shared<TestFamily>(); });
}
