// The model plugins on a CUDA device against transformers' CPU reference logits and greedy tokens (fixtures of
// tools/make_model_fixtures.py, made by test_models). Skipped, saying why, in a CPU build or without a GPU:
// run it on the GPU machine from a CUDA build (-DDSCHAT_CUDA=ON).
#include <cstdlib>

#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using namespace dschat;

namespace {

fs::path fixtures_dir() {
  if (const char* env = std::getenv("DSCHAT_MODEL_FIXTURES")) return env;
  return fs::path(DSCHAT_BINARY_DIR) / "test-data" / "models";
}

fs::path plugin_dir() {
  if (const char* env = std::getenv("DSCHAT_TEST_MODEL_PLUGINS")) return env;
  return fs::path(DSCHAT_BINARY_DIR) / "lib" / "dschat" / "plugins";
}

std::shared_ptr<ModelFamily> family(const std::string& name) {
  static PluginRegistry registry;
  static auto document = ConfigDocument::parse_string("", "test", ".");
  return registry.create_from_library<ModelFamily>(plugin_dir() / ("libdschat-" + name + ".so"), document->root());
}

class CudaParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!built_with_cuda()) GTEST_SKIP() << "CPU build: configure with -DDSCHAT_CUDA=ON and run on a GPU";
    std::string problem;
    if (list_accelerators(&problem).empty()) GTEST_SKIP() << "no CUDA device: " << problem;
    if (!fs::exists(fixtures_dir() / GetParam() / "reference.safetensors"))
      GTEST_SKIP() << "no fixtures in " << fixtures_dir() << " (run test_models first, or set DSCHAT_MODEL_FIXTURES)";
    // Compare fp32 with fp32: no TF32 shortcuts in matmuls.
    at::globalContext().setAllowTF32CuBLAS(false);
  }
};

TEST_P(CudaParity, LogitsAndGreedyTokensMatchTransformers) {
  const std::string variant = GetParam();
  const std::string plugin = variant.rfind("opt", 0) == 0 ? "opt" : variant.rfind("bloom", 0) == 0 ? "bloom" : "llama";
  auto reference = safetensors::File::open(fixtures_dir() / variant / "reference.safetensors");
  const at::Device cuda(at::kCUDA, 0);
  auto model = family(plugin)->from_pretrained(fixtures_dir() / variant, {.dtype = at::kFloat, .device = cuda});
  model->eval();
  at::NoGradGuard no_grad;

  auto ids = reference->tensor("input_ids").to(cuda);
  auto mask = reference->tensor("attention_mask").to(cuda);
  auto logits = model->forward(ids, mask).logits.cpu();
  auto keep = reference->tensor("attention_mask").to(at::kBool);
  double diff = (logits - reference->tensor("logits")).abs().index({keep}).max().item<double>();
  EXPECT_LE(diff, 1e-4) << variant;

  // Greedy decoding on the KV cache, all on the GPU.
  auto expected = reference->tensor("generated");
  const int64_t new_tokens = expected.size(1) - ids.size(1);
  KvCache cache = model->allocate_cache(ids.size(0), ids.size(1) + new_tokens);
  auto sequence = ids;
  auto running_mask = mask;
  auto step_logits = model->forward(ids, mask, &cache).logits;
  for (int64_t t = 0; t < new_tokens; ++t) {
    auto next = step_logits.select(1, -1).argmax(-1, /*keepdim=*/true);
    sequence = at::cat({sequence, next}, 1);
    running_mask = at::cat({running_mask, at::ones_like(next)}, 1);
    if (t + 1 < new_tokens) step_logits = model->forward(next, running_mask, &cache).logits;
  }
  EXPECT_TRUE(sequence.cpu().equal(expected)) << variant << "\n" << sequence.cpu() << "\nvs\n" << expected;
}

INSTANTIATE_TEST_SUITE_P(Families, CudaParity,
                         ::testing::Values("opt", "opt350m", "bloom", "llama", "llama3_scaled", "llama_linear"));

}  // namespace
