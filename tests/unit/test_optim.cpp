// The SDK's training engine (optim.h): HF schedules, DeepSpeed-Chat parameter groups, gradient accumulation,
// checkpoint save/load, activation checkpointing, mixed precision - on a tiny random OPT from the opt plugin.

#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/partitioned_engine.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/strategy.h"

#include <torch/optim/adamw.h>

namespace fs = std::filesystem;
using namespace dschat;

namespace {

std::shared_ptr<ModelFamily> opt_family() {
  static std::shared_ptr<ModelFamily> family = [] {
    const std::string file = std::string(DSCHAT_BINARY_DIR) + "/lib/dschat/plugins/libdschat-opt.so";
    static PluginRegistry registry;  // the host's loader; keeps the library for the family's lifetime
    static auto document = ConfigDocument::parse_string("", "test", ".");
    return registry.create_from_library<ModelFamily>(file, document->root());
  }();
  return family;
}

std::shared_ptr<CausalLM> tiny_opt(uint64_t seed, at::ScalarType dtype = at::kFloat) {
  nlohmann::json config = {{"model_type", "opt"},        {"vocab_size", 64},    {"hidden_size", 16},
                           {"num_hidden_layers", 2},     {"num_attention_heads", 2}, {"ffn_dim", 32},
                           {"max_position_embeddings", 32}, {"word_embed_proj_dim", 16}, {"do_layer_norm_before", true},
                           {"pad_token_id", 1},          {"bos_token_id", 2},   {"eos_token_id", 2}};
  at::manual_seed(static_cast<int64_t>(seed));
  return opt_family()->build(config, {dtype, at::kCPU});
}

void copy_weights(torch::nn::Module& from, torch::nn::Module& to) {
  at::NoGradGuard no_grad;
  auto src = from.named_parameters();
  for (auto& item : to.named_parameters()) item.value().copy_(src[item.key()]);
}

double max_param_diff(torch::nn::Module& a, torch::nn::Module& b) {
  auto pa = a.named_parameters();
  double diff = 0;
  for (auto& item : b.named_parameters())
    diff = std::max(diff, (pa[item.key()].to(at::kFloat) - item.value().to(at::kFloat)).abs().max().item<double>());
  return diff;
}

at::Tensor causal_loss(const at::Tensor& logits, const at::Tensor& ids) {
  auto V = logits.size(-1);
  return at::cross_entropy_loss(logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V}), ids.slice(1, 1).reshape({-1}));
}

at::Tensor batch_ids(int64_t rows, int64_t seed) {
  at::manual_seed(seed);
  return at::randint(3, 64, {rows, 12}, at::kLong);
}

std::unique_ptr<Engine> engine_for(std::shared_ptr<CausalLM> lm, OptimizerOptions o) {
  return make_local_engine(lm, lm, o, at::kCPU, "test");
}

}  // namespace

TEST(Schedule, WarmupLinearCosineAsHfGetScheduler) {
  // warmup 10 of 110 steps
  EXPECT_DOUBLE_EQ(lr_multiplier("linear", 0, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier("linear", 5, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier("linear", 10, 10, 110), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier("linear", 60, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier("linear", 110, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier("linear", 200, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_multiplier("cosine", 5, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier("cosine", 10, 10, 110), 1.0);
  EXPECT_NEAR(lr_multiplier("cosine", 35, 10, 110), 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_NEAR(lr_multiplier("cosine", 60, 10, 110), 0.5, 1e-12);
  EXPECT_NEAR(lr_multiplier("cosine", 110, 10, 110), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(lr_multiplier("cosine", 0, 0, 100), 1.0);  // no warmup: full lr at the first step
  EXPECT_DOUBLE_EQ(lr_multiplier("constant", 3, 10, 110), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier("constant_with_warmup", 3, 10, 110), 0.3);
  EXPECT_THROW(lr_multiplier("cosine_with_restarts", 3, 10, 110), std::invalid_argument);
}

TEST(Schedule, EngineStepsFollowTheSchedule) {
  auto lm = tiny_opt(1);
  OptimizerOptions o;
  o.learning_rate = 1e-3;
  o.lr_scheduler = "linear";
  o.num_warmup_steps = 2;
  o.total_steps = 4;
  auto engine = engine_for(lm, o);
  auto ids = batch_ids(2, 5);
  std::vector<double> lrs;
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(engine->lr(), 1e-3 * lr_multiplier("linear", i, 2, 4), 1e-15);
    engine->backward(causal_loss(engine->forward(ids, {}).logits, ids));
    lrs.push_back(engine->step().lr);
  }
  EXPECT_NEAR(lrs[0], 0.0, 1e-15);
  EXPECT_NEAR(lrs[1], 0.5e-3, 1e-15);
  EXPECT_NEAR(lrs[2], 1e-3, 1e-15);
  EXPECT_NEAR(lrs[3], 0.5e-3, 1e-15);
  EXPECT_EQ(engine->global_step(), 4);
}

TEST(ParamGroups, NamesAsDeepSpeedChat) {
  EXPECT_EQ(param_group_of("model.decoder.layers.0.self_attn.q_proj.weight"), ParamGroupKind::decay);
  EXPECT_EQ(param_group_of("model.decoder.embed_tokens.weight"), ParamGroupKind::decay);
  EXPECT_EQ(param_group_of("model.decoder.layers.0.self_attn.q_proj.bias"), ParamGroupKind::no_decay);
  EXPECT_EQ(param_group_of("model.decoder.layers.0.self_attn_layer_norm.weight"), ParamGroupKind::no_decay);
  EXPECT_EQ(param_group_of("model.layers.0.input_layernorm.weight"), ParamGroupKind::no_decay);
  EXPECT_EQ(param_group_of("model.norm.weight"), ParamGroupKind::no_decay);
  EXPECT_EQ(param_group_of("transformer.ln_f.weight"), ParamGroupKind::no_decay);
  EXPECT_EQ(param_group_of("transformer.h.0.input_LayerNorm.weight"), ParamGroupKind::no_decay);  // lower-cased
  EXPECT_EQ(param_group_of("model.decoder.layers.0.fc1.lora_right_weight"), ParamGroupKind::lora);
  EXPECT_EQ(param_group_of("model.decoder.layers.0.fc1.lora_left_weight"), ParamGroupKind::lora);
}

TEST(ParamGroups, WeightDecayAndLoraLearningRatePerGroup) {
  // A loss with zero gradient isolates AdamW's decoupled decay: p <- p (1 - lr wd) for decay and LoRA groups
  // (with their own lr), unchanged for the no-decay group.
  auto lm = tiny_opt(2);
  enable_lora_where(*lm, "decoder.layers.", {"q_proj", "fc1"}, LoraOptions{4});
  {  // LoRA L starts at zero; give it values so decay is visible
    at::NoGradGuard g;
    for (auto& p : lm->named_parameters())
      if (p.key().find("lora_left_weight") != std::string::npos) p.value().fill_(0.5);
  }
  auto before = tiny_opt(99);
  enable_lora_where(*before, "decoder.layers.", {"q_proj", "fc1"}, LoraOptions{4});
  copy_weights(*lm, *before);
  OptimizerOptions o;
  o.learning_rate = 1e-2;
  o.lora_learning_rate = 1e-1;
  o.weight_decay = 0.5;
  o.lr_scheduler = "constant";
  auto engine = engine_for(lm, o);
  at::Tensor zero = at::zeros({});
  for (auto& p : lm->parameters()) zero = zero + p.sum() * 0.0;
  engine->backward(zero);
  ASSERT_TRUE(engine->step().applied);
  auto old = before->named_parameters();
  int checked[3] = {0, 0, 0};
  for (auto& item : lm->named_parameters()) {
    auto kind = param_group_of(item.key());
    double factor = kind == ParamGroupKind::no_decay ? 1.0 : kind == ParamGroupKind::lora ? 1 - 0.1 * 0.5 : 1 - 0.01 * 0.5;
    EXPECT_TRUE(at::allclose(item.value(), old[item.key()] * factor, 1e-6, 1e-7)) << item.key();
    ++checked[static_cast<int>(kind)];
  }
  EXPECT_GT(checked[0], 0);
  EXPECT_GT(checked[1], 0);
  EXPECT_GT(checked[2], 0);
}

TEST(Engine, FusedAdamWMatchesLibTorchAdamW) {
  // The engine's fused update against LibTorch's reference AdamW with the same two groups, over three steps.
  // eps 0.1 keeps Adam from amplifying float rounding in near-zero gradients (m / sqrt(v) ~ sign(g)) while the
  // second moment still shapes every update.
  auto a = tiny_opt(15), b = tiny_opt(16);
  copy_weights(*a, *b);
  OptimizerOptions o;
  o.eps = 0.1;
  o.learning_rate = 1e-2;
  o.weight_decay = 0.1;
  o.lr_scheduler = "constant";
  o.max_grad_norm = 0.0;
  auto engine = engine_for(a, o);
  std::vector<at::Tensor> decay, no_decay;
  for (auto& item : b->named_parameters())
    (param_group_of(item.key()) == ParamGroupKind::no_decay ? no_decay : decay).push_back(item.value());
  auto options = [](double wd) {
    auto opt = std::make_unique<torch::optim::AdamWOptions>(1e-2);
    opt->betas({0.9, 0.95}).eps(0.1).weight_decay(wd);
    return opt;
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(0.1));
  groups.emplace_back(no_decay, options(0.0));
  torch::optim::AdamW reference(groups);
  for (int step = 0; step < 3; ++step) {
    auto ids = batch_ids(2, 50 + step);
    engine->backward(causal_loss(engine->forward(ids, {}).logits, ids));
    engine->step();
    reference.zero_grad();
    causal_loss(b->forward(ids, {}).logits, ids).backward();
    reference.step();
  }
  EXPECT_LT(max_param_diff(*a, *b), 1e-6);
  auto start = tiny_opt(15);
  EXPECT_GT(max_param_diff(*a, *start), 1e-3);  // it moved
}

TEST(Engine, GradientAccumulationMatchesTheFullBatch) {
  // Two micro-batches of 2 with accumulation 2 == one batch of 4 (equal lengths, so the mean losses agree).
  // eps = 1 makes Adam's update ~ lr * g, so the comparison measures the gradients, not sign(g) near zero.
  auto a = tiny_opt(3), b = tiny_opt(4);
  copy_weights(*a, *b);
  auto start = tiny_opt(5);
  copy_weights(*a, *start);
  OptimizerOptions o;
  o.learning_rate = 1e-1;
  o.eps = 1.0;
  o.lr_scheduler = "constant";
  o.max_grad_norm = 0.0;
  OptimizerOptions accum = o;
  accum.gradient_accumulation_steps = 2;
  auto ea = engine_for(a, accum), eb = engine_for(b, o);
  for (int step = 0; step < 2; ++step) {
    auto ids = batch_ids(4, 10 + step);
    auto first = ids.slice(0, 0, 2), second = ids.slice(0, 2, 4);
    ea->backward(causal_loss(ea->forward(first, {}).logits, first));
    EXPECT_FALSE(ea->step().boundary);
    ea->backward(causal_loss(ea->forward(second, {}).logits, second));
    EXPECT_TRUE(ea->step().applied);
    eb->backward(causal_loss(eb->forward(ids, {}).logits, ids));
    EXPECT_TRUE(eb->step().applied);
  }
  EXPECT_EQ(ea->global_step(), 2);
  EXPECT_LT(max_param_diff(*a, *b), 1e-6);
  EXPECT_GT(max_param_diff(*a, *start), 1e-4);  // it did train
}

TEST(Engine, CheckpointResumesToTheSameNextStep) {
  const fs::path dir = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "optim" / "ckpt";
  fs::remove_all(dir.parent_path());
  OptimizerOptions o;
  o.learning_rate = 1e-2;
  o.lr_scheduler = "cosine";
  o.num_warmup_steps = 1;
  o.total_steps = 5;
  o.weight_decay = 0.1;
  auto a = tiny_opt(6);
  auto ea = engine_for(a, o);
  for (int step = 0; step < 2; ++step) {
    auto ids = batch_ids(2, 20 + step);
    ea->backward(causal_loss(ea->forward(ids, {}).logits, ids));
    ea->step();
  }
  ea->save_checkpoint(dir, {{"epoch", 3}, {"next_batch", 7}});
  ea->save_checkpoint(dir, {{"epoch", 3}, {"next_batch", 7}});  // overwriting an existing checkpoint works
  EXPECT_TRUE(fs::exists(dir / "engine.json"));
  for (const auto& e : fs::directory_iterator(dir.parent_path()))
    EXPECT_EQ(e.path().filename(), "ckpt") << "leftover " << e.path();
  const double rand_a = at::rand({1}).item<double>();
  auto ids = batch_ids(2, 30);
  ea->backward(causal_loss(ea->forward(ids, {}).logits, ids));
  auto sa = ea->step();

  auto b = tiny_opt(7);  // different initial weights, fresh optimizer
  auto eb = engine_for(b, o);
  auto client = eb->load_checkpoint(dir);
  EXPECT_EQ(client["epoch"], 3);
  EXPECT_EQ(client["next_batch"], 7);
  EXPECT_EQ(eb->global_step(), 2);
  EXPECT_DOUBLE_EQ(at::rand({1}).item<double>(), rand_a);  // RNG restored
  eb->backward(causal_loss(eb->forward(ids, {}).logits, ids));
  auto sb = eb->step();
  EXPECT_DOUBLE_EQ(sa.lr, sb.lr);
  EXPECT_EQ(max_param_diff(*a, *b), 0.0);  // optimizer moments restored too: bitwise the same step
  EXPECT_THROW(eb->load_checkpoint(dir.parent_path() / "missing"), std::runtime_error);
}

TEST(Engine, ActivationCheckpointingGivesTheSameGradients) {
  auto a = tiny_opt(8), b = tiny_opt(9);
  copy_weights(*a, *b);
  OptimizerOptions o;
  auto ckpt = o;
  ckpt.gradient_checkpointing = true;
  auto ea = engine_for(a, o), eb = engine_for(b, ckpt);
  auto ids = batch_ids(2, 40);
  auto mask = at::ones({2, 12}, at::kLong);
  mask[1].slice(0, 9).fill_(0);  // padding exercises the shared attention inputs
  ea->backward(causal_loss(ea->forward(ids, mask).logits, ids));
  eb->backward(causal_loss(eb->forward(ids, mask).logits, ids));
  auto ga = a->named_parameters();
  int compared = 0;
  for (auto& item : b->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_LT((item.value().grad() - ga[item.key()].grad()).abs().max().item<double>(), 1e-6) << item.key();
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

TEST(Engine, CheckpointingWithOnlyLoraStillReachesTheAdapters) {
  // DeepSpeed-Chat issue #386: with a frozen embedding the checkpointed blocks got no gradient.
  auto lm = tiny_opt(10);
  enable_lora_where(*lm, "", {"q_proj"}, LoraOptions{4});
  freeze_all_but_lora(*lm);
  OptimizerOptions o;
  o.gradient_checkpointing = true;
  auto engine = engine_for(lm, o);
  auto ids = batch_ids(2, 41);
  engine->backward(causal_loss(engine->forward(ids, {}).logits, ids));
  int with_grad = 0;
  // L starts at zero, so R's gradient is zero; L's is not.
  for (auto& item : lm->named_parameters()) {
    if (item.key().find("lora_left_weight") == std::string::npos) continue;
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0.0) << item.key();
    ++with_grad;
  }
  EXPECT_EQ(with_grad, 2);
  EXPECT_FALSE(lm->named_parameters()["model.decoder.embed_tokens.weight"].grad().defined());
}

TEST(Engine, Bf16TrainsOnFp32MasterWeights) {
  auto lm = tiny_opt(11, at::kBFloat16);
  OptimizerOptions o;
  o.learning_rate = 1e-2;
  o.lr_scheduler = "constant";
  auto engine = engine_for(lm, o);
  EXPECT_NE(engine->describe().find("bf16 weights + fp32 master weights"), std::string::npos) << engine->describe();
  auto ids = batch_ids(4, 42);
  double first = 0, last = 0;
  for (int i = 0; i < 8; ++i) {
    auto loss = causal_loss(engine->forward(ids, {}).logits, ids);
    (i == 0 ? first : last) = loss.item<double>();
    engine->backward(loss);
    engine->step();
  }
  EXPECT_LT(last, first - 0.05);
  for (auto& p : lm->parameters()) EXPECT_EQ(p.scalar_type(), at::kBFloat16);
}

TEST(Engine, Fp16OverflowSkipsTheStepAndHalvesTheScale) {
  auto lm = tiny_opt(12, at::kHalf);
  auto copy = tiny_opt(13, at::kHalf);
  copy_weights(*lm, *copy);
  OptimizerOptions o;
  o.initial_loss_scale = 1024;
  auto engine = engine_for(lm, o);
  auto ids = batch_ids(2, 43);
  auto loss = causal_loss(engine->forward(ids, {}).logits, ids);
  engine->backward(loss * 1e30);  // the scaled gradients overflow
  auto step = engine->step();
  EXPECT_TRUE(step.boundary);
  EXPECT_FALSE(step.applied);
  EXPECT_EQ(engine->global_step(), 0);
  EXPECT_EQ(max_param_diff(*lm, *copy), 0.0);
  engine->backward(causal_loss(engine->forward(ids, {}).logits, ids));
  auto next = engine->step();
  EXPECT_TRUE(next.applied);
  EXPECT_DOUBLE_EQ(next.loss_scale, 512.0);
  EXPECT_GT(max_param_diff(*lm, *copy), 0.0);
}

// PPO's pattern for fp16: both engines are asked before either steps, and one overflow skips both. Only the
// engine that overflowed halves its scale; the other keeps its scale and its weights.
TEST(Engine, Fp16OverflowOfOneEngineSkipsBothSteps) {
  auto actor = tiny_opt(12, at::kHalf), critic = tiny_opt(14, at::kHalf);
  auto actor_before = tiny_opt(12, at::kHalf), critic_before = tiny_opt(14, at::kHalf);
  OptimizerOptions o;
  o.initial_loss_scale = 1024;
  auto actor_engine = engine_for(actor, o), critic_engine = engine_for(critic, o);
  auto ids = batch_ids(2, 44);
  actor_engine->backward(causal_loss(actor_engine->forward(ids, {}).logits, ids));
  critic_engine->backward(causal_loss(critic_engine->forward(ids, {}).logits, ids) * 1e30);
  EXPECT_FALSE(actor_engine->gradients_overflowed());
  EXPECT_TRUE(critic_engine->gradients_overflowed());
  const StepOptions together{actor_engine->gradients_overflowed() || critic_engine->gradients_overflowed()};
  auto a = actor_engine->step(together), c = critic_engine->step(together);
  EXPECT_TRUE(a.boundary && a.overflow && !a.applied && !a.nonfinite);
  EXPECT_TRUE(c.boundary && c.overflow && !c.applied && !c.nonfinite);
  EXPECT_EQ(max_param_diff(*actor, *actor_before), 0.0);
  EXPECT_EQ(max_param_diff(*critic, *critic_before), 0.0);
  // The next micro-batch is clean: both step, the critic at half its scale, the actor at its own.
  actor_engine->backward(causal_loss(actor_engine->forward(ids, {}).logits, ids));
  critic_engine->backward(causal_loss(critic_engine->forward(ids, {}).logits, ids));
  EXPECT_FALSE(actor_engine->gradients_overflowed() || critic_engine->gradients_overflowed());
  a = actor_engine->step(StepOptions{});
  c = critic_engine->step(StepOptions{});
  EXPECT_TRUE(a.applied && c.applied);
  EXPECT_DOUBLE_EQ(a.loss_scale, 1024.0);
  EXPECT_DOUBLE_EQ(c.loss_scale, 512.0);
  EXPECT_EQ(actor_engine->global_step(), 1);
  EXPECT_EQ(critic_engine->global_step(), 1);
}

// ddp / zero train fp16 with the same dynamic loss scale as the single engine: on one process (a size-1 group)
// each ZeRO stage skips the overflowing step, halves its scale and then trains to the single engine's weights.
TEST(Engine, Fp16LossScaleUnderDdpAndZeroMatchesTheSingleEngine) {
  auto ids = batch_ids(2, 45);
  OptimizerOptions o;
  o.initial_loss_scale = 1024;
  o.lr_scheduler = "constant";
  o.learning_rate = 1e-2;
  auto train = [&](Engine& engine) {
    std::vector<double> scales;
    for (int i = 0; i < 3; ++i) {
      auto loss = causal_loss(engine.forward(ids, {}).logits, ids);
      engine.backward(i == 0 ? loss * 1e30 : loss);
      auto step = engine.step();
      EXPECT_EQ(step.applied, i != 0) << engine.describe();
      EXPECT_EQ(step.overflow, i == 0) << engine.describe();
      scales.push_back(step.loss_scale);
    }
    return scales;
  };
  auto single = tiny_opt(15, at::kHalf);
  auto single_engine = engine_for(single, o);
  const auto single_scales = train(*single_engine);
  EXPECT_EQ(single_scales, (std::vector<double>{1024, 512, 512}));
  for (int stage : {0, 1, 2, 3}) {
    auto lm = tiny_opt(15, at::kHalf);
    PartitionedEngineOptions partitioning;
    partitioning.zero_stage = stage;
    auto engine = make_partitioned_engine(lm, lm, o, at::kCPU, partitioning, "test");
    EXPECT_NE(engine->describe().find("dynamic loss scale"), std::string::npos) << engine->describe();
    EXPECT_EQ(train(*engine), single_scales) << "zero stage " << stage;
    auto whole = engine->gather_parameters();
    EXPECT_LT(max_param_diff(*lm, *single), 2e-3) << "zero stage " << stage;
  }
}

TEST(Engine, RewardModelTrainsThroughTheEngine) {
  // The reward stage's wiring: module = RewardModel (LM + v_head), blocks from the LM; the pair loss lowers.
  auto rm = std::make_shared<RewardModel>(tiny_opt(14));
  OptimizerOptions o;
  o.learning_rate = 1e-2;
  o.lr_scheduler = "constant";
  o.gradient_checkpointing = true;
  auto engine = make_local_engine(rm, rm->base, o, at::kCPU, "test");
  auto ids = batch_ids(4, 44);
  ids.slice(1, 0, 4).copy_(ids[0].slice(0, 0, 4).expand({4, 4}));  // a shared prompt
  auto mask = at::ones_like(ids);
  double first = 0, last = 0;
  for (int i = 0; i < 10; ++i) {
    auto values = rm->values_from_hidden(engine->forward(ids, mask, {.return_hidden = true, .return_logits = false}).hidden);
    auto out = reward_pair_loss(values, ids, /*pad_id=*/1, 0);
    (i == 0 ? first : last) = out.loss.item<double>();
    engine->backward(out.loss);
    engine->step();
  }
  EXPECT_LT(last, first * 0.5);
  EXPECT_TRUE(rm->v_head->weight.requires_grad());
}
