// A well-formed plugin: one hook and one algorithm, with options read through ConfigTable.
#include <stdexcept>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/plugin.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/embedding.h>

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

// The smallest network a "test-lm" config.json describes: a [vocab_size, 4] embedding tied to the output, no blocks
// (what tests/data/models/test-lm/model.safetensors holds), so validate's weight check has something to check.
class TestLM : public dschat::CausalLM {
 public:
  explicit TestLM(const nlohmann::json& config)
      : CausalLM(dims_of(config), config),
        embed_(register_module("embed", torch::nn::Embedding(dims_of(config).vocab_size, 4))) {}
  at::Tensor embed(const at::Tensor& input_ids, const dschat::AttentionInputs&) override {
    return embed_->forward(input_ids);
  }
  at::Tensor final_hidden(const at::Tensor& hidden) override { return hidden; }
  at::Tensor lm_logits(const at::Tensor& hidden) override { return at::matmul(hidden, embed_->weight.t()); }

 private:
  static dschat::ModelDims dims_of(const nlohmann::json& config) {
    dschat::ModelDims d;
    d.vocab_size = config.at("vocab_size").get<int64_t>();
    d.hidden_size = d.output_hidden_size = 4;
    return d;
  }
  torch::nn::Embedding embed_;
};

class TestFamily : public dschat::ModelFamily {
 public:
  std::string model_type() const override { return "test-lm"; }
  std::shared_ptr<dschat::CausalLM> build(const nlohmann::json& config, const dschat::ModelOptions&) const override {
    return std::make_shared<TestLM>(config);
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
