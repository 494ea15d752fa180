// The memory planner: each state term follows the strategy's placement (replicated, ZeRO shards, fp32 masters,
// offload), activations follow batch, length and checkpointing, the peak phase is the largest; `dschat plan`
// prints and exports the plan, and `validate` / `run` refuse a pipeline that cannot fit before any work starts,
// naming the largest term and what would shrink it.
#include <filesystem>
#include <stdexcept>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/sdk/memory_plan.h"

namespace fs = std::filesystem;
using namespace dschat;
using dschat::testing::run_dschat;

namespace {

ModelShape shape(at::ScalarType dtype = at::kFloat) {
  ModelShape s;
  s.dims.vocab_size = 1000;
  s.dims.hidden_size = 64;
  s.dims.output_hidden_size = 64;
  s.dims.num_layers = 4;
  s.dims.num_heads = 4;
  s.dims.num_kv_heads = 4;
  s.dims.head_dim = 16;
  s.intermediate_size = 256;
  s.parameters = 1'000'000;
  s.block_parameters = 50'000;
  s.lora_parameters_per_dim = 4 * 6 * 64;
  s.dtype = dtype;
  return s;
}

MemoryNeeds one_trained_model(bool checkpointing = false) {
  MemoryNeeds needs;
  ModelUse use{"model", "", true};
  use.gradient_checkpointing = checkpointing;
  needs.models.push_back(use);
  needs.phases.push_back({"training", {{"model", 8, 128, 128, true}}, {}});
  needs.phases.push_back({"evaluation", {{"model", 8, 128, 128, false}}, {}});
  return needs;
}

int64_t term(const PhasePlan& phase, const std::string& starts_with) {
  for (const auto& t : phase.terms)
    if (t.name.rfind(starts_with, 0) == 0) return t.bytes;
  ADD_FAILURE() << "no term starting with " << starts_with;
  return -1;
}

StagePlan plan(const MemoryNeeds& needs, const StatePlacement& placement, at::ScalarType dtype = at::kFloat,
               bool on_gpu = false) {
  return plan_stage("s", needs, [&](const std::string&) { return shape(dtype); }, placement, 0, on_gpu);
}

}  // namespace

TEST(MemoryPlan, OneProcessHoldsWeightsGradientsAndAdamMoments) {
  auto p = plan(one_trained_model(), {});
  const auto& training = p.phases.at(0);
  EXPECT_EQ(term(training, "model weights"), 4'000'000);
  EXPECT_EQ(term(training, "model gradients"), 4'000'000);
  EXPECT_EQ(term(training, "model optimizer"), 8'000'000);  // fp32 weights are the masters: two moments
  EXPECT_EQ(p.peak()->name, "training");                    // the graph makes training larger than evaluation
  EXPECT_GT(training.device_bytes(), p.phases.at(1).device_bytes());
}

TEST(MemoryPlan, Bf16KeepsAnFp32MasterAndHalvesTheWeights) {
  auto p = plan(one_trained_model(), {}, at::kBFloat16);
  const auto& training = p.phases.at(0);
  EXPECT_EQ(term(training, "model weights"), 2'000'000);
  EXPECT_EQ(term(training, "model gradients"), 2'000'000);
  EXPECT_EQ(term(training, "model optimizer"), 12'000'000);
}

TEST(MemoryPlan, ZeroStagesDivideWhatTheyShard) {
  StatePlacement zero2;
  zero2.optimizer_shards = zero2.gradient_shards = 4;
  zero2.fp32_master_weights = zero2.fp32_gradients = true;
  auto p2 = plan(one_trained_model(), zero2);
  EXPECT_EQ(term(p2.phases[0], "model weights"), 4'000'000);    // whole on every rank
  EXPECT_EQ(term(p2.phases[0], "model gradients"), 1'000'000);  // fp32, a quarter
  EXPECT_EQ(term(p2.phases[0], "model optimizer"), 3'000'000);  // 12 bytes per parameter, a quarter

  StatePlacement zero3 = zero2;
  zero3.parameter_shards = 4;
  zero3.recompute_blocks = true;
  zero3.gathered_blocks = 2;
  auto p3 = plan(one_trained_model(), zero3);
  EXPECT_EQ(term(p3.phases[0], "model weights"), 1'000'000);
  EXPECT_EQ(term(p3.phases[0], "model communication buffers"), 2 * 50'000 * 4);
  // ZeRO-3 recomputes every block in backward: the activations are those of a checkpointed run.
  EXPECT_EQ(term(p3.phases[0], "model activations"), term(plan(one_trained_model(true), {}).phases[0], "model activations"));
}

TEST(MemoryPlan, OffloadMovesTheOptimizerToHostMemoryOnAGpu) {
  StatePlacement offload;
  offload.optimizer_on_host = true;
  auto gpu = plan(one_trained_model(), offload, at::kFloat, /*on_gpu=*/true);
  EXPECT_EQ(gpu.phases[0].host_bytes(), 8'000'000);
  auto cpu = plan(one_trained_model(), offload, at::kFloat, /*on_gpu=*/false);  // the host is the device
  EXPECT_EQ(cpu.phases[0].host_bytes(), 0);
  EXPECT_EQ(cpu.phases[0].device_bytes(), gpu.phases[0].device_bytes() + 8'000'000);
}

TEST(MemoryPlan, ActivationsGrowWithBatchAndLengthAndShrinkWithCheckpointing) {
  const ModelShape s = shape();
  const int64_t base = activation_bytes(s, {"model", 8, 128, 0, true}, false);
  EXPECT_GT(activation_bytes(s, {"model", 16, 128, 0, true}, false), base);
  EXPECT_GT(activation_bytes(s, {"model", 8, 256, 0, true}, false), base);
  EXPECT_LT(activation_bytes(s, {"model", 8, 128, 0, true}, true), base);
  EXPECT_LT(activation_bytes(s, {"model", 8, 128, 0, false}, false), base);
  // Logits over every position: vocab x positions in fp32, several copies.
  EXPECT_GT(activation_bytes(s, {"model", 8, 128, 128, true}, false) - base, 8 * 128 * 1000 * 4);
  EXPECT_EQ(kv_cache_bytes(s, {"model", 2, 10}), 2 * 4 * 2 * 10 * 64 * 4);
}

TEST(MemoryPlan, FrozenModelsHoldOnlyWeightsInTheirDtype) {
  MemoryNeeds needs = one_trained_model();
  ModelUse frozen{"reference", "model", false};
  frozen.dtype = at::kBFloat16;
  needs.models.push_back(frozen);
  auto p = plan(needs, {});
  EXPECT_EQ(term(p.phases[0], "reference weights (bf16, frozen)"), 2'000'000);
}

// ZeRO-3 shards a frozen model's blocks (4 x 50k of its 1M parameters) and gathers one at a time; the rest stays.
TEST(MemoryPlan, ZeroThreeShardsTheBlocksOfFrozenModels) {
  MemoryNeeds needs = one_trained_model();
  needs.models.push_back({"reference", "model", false});
  StatePlacement zero3;
  zero3.frozen_block_shards = 2;
  auto p = plan(needs, zero3);
  EXPECT_EQ(term(p.phases[0], "reference weights (fp32, frozen, blocks 1/2 shard)"),
            (1'000'000 - 200'000 + 100'000 + 50'000) * 4);
}

TEST(MemoryPlan, APhaseNamingAModelTheStageDoesNotHoldIsAnError) {
  MemoryNeeds needs = one_trained_model();
  needs.phases.push_back({"rollout", {}, {{"actor", 1, 10}}});
  EXPECT_THROW(plan(needs, {}), std::invalid_argument);
}

namespace {
const std::string kQuickstart = std::string(DSCHAT_SOURCE_DIR) + "/configs/quickstart.toml";
}

TEST(MemoryPlanCommand, PrintsEveryStageAndExportsJson) {
  auto text = run_dschat("plan " + kQuickstart);
  ASSERT_EQ(text.exit_code, 0) << text.output;
  for (const char* needle : {"stage sft: peak", "stage rm: peak", "stage rlhf: peak", "actor KV cache",
                             "critic optimizer (Adam moments)", "reference weights (fp32, frozen)", "fits:"})
    EXPECT_NE(text.output.find(needle), std::string::npos) << needle << "\n" << text.output;

  auto json = run_dschat("plan " + kQuickstart + " --json --world 2");
  ASSERT_EQ(json.exit_code, 0) << json.output;
  auto j = nlohmann::json::parse(json.output.substr(json.output.find('{')));
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_TRUE(j["fits"].get<bool>());
  ASSERT_EQ(j["stages"].size(), 3u);
  EXPECT_EQ(j["stages"][2]["stage"], "rlhf");
  EXPECT_GT(j["stages"][0]["peak_bytes"].get<int64_t>(), 0);
}

TEST(MemoryPlanCommand, SaysWhatDoesNotFitOnASmallerDevice) {
  auto r = run_dschat("plan " + kQuickstart + " --device-memory 0.01");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("does not fit"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the largest term is"), std::string::npos) << r.output;
}

TEST(MemoryPlanCommand, ValidateAndRunRefuseAPipelineThatCannotFitBeforeAnyWork) {
  const fs::path out = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "memory-plan-refused";
  fs::remove_all(out);
  // A micro-batch of two million sequences: its activations alone are far past any machine here.
  const std::string huge = " --set stage.sft.per_device_train_batch_size=2000000 --set pipeline.output_dir=\\\"" +
                           out.string() + "\\\"";
  auto validate = run_dschat("validate " + kQuickstart + huge);
  EXPECT_EQ(validate.exit_code, 2) << validate.output;
  EXPECT_NE(validate.output.find("does not fit in memory"), std::string::npos) << validate.output;
  EXPECT_NE(validate.output.find("stage sft needs"), std::string::npos) << validate.output;
  EXPECT_NE(validate.output.find("model activations"), std::string::npos) << validate.output;
  EXPECT_NE(validate.output.find("gradient checkpointing"), std::string::npos) << validate.output;

  auto run = run_dschat("run " + kQuickstart + huge);
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_FALSE(fs::exists(out)) << "the refused run started work";

  auto unchecked = run_dschat("validate " + kQuickstart + huge + " --no-memory-check");
  EXPECT_EQ(unchecked.exit_code, 0) << unchecked.output;
}
