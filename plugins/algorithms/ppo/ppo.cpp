// Algorithm "ppo": DeepSpeed-Chat step 3 (dschat/rlhf/ppo_trainer.py + step3 main.py), with the hybrid engine's
// generation view, the EMA hook and optional PTX mixing.
//
// Roles: actor (trained, e.g. the sft stage), critic (trained, e.g. the rm stage), reference (frozen, default: the
// actor's model) and reward (frozen, default: the critic's model).
//
// Per prompt batch (a rollout): generate answers inside a GenerationView on the actor with the stage's generation
// plugin (eos and pad = the tokenizer's eos, as DeepSpeed-Chat sets pad = eos); compare the generation path's
// log-probs with the training path's on a few rows (consistency/max_abs_diff; past consistency_threshold the run
// stops); drop rows whose answer has <= 1 non-pad token; with attention_mask = (seq != pad) -- DeepSpeed-Chat's
// mask, which also hides OPT's BOS (== pad) and a generated eos -- compute old log-probs (actor), ref log-probs,
// values over [:, :-1] (critic) and the reward model's score at the last token before the first pad after the
// prompt. Once generation_batches rollouts are buffered: ppo_epochs passes over per_device_training_batch_size
// micro-batches, each an actor step (then a PTX step when enabled), the hooks' after_optimizer_step, and a critic
// step; the math is dschat/sdk/ppo_math.h.
//
// One forward fewer per model than DeepSpeed-Chat: the first micro-batch after a rollout trains on the weights the
// rollout was made with, so its actor and critic training forwards equal the experience forwards of its rows.
// Those rows' experience forwards record autograd and the training step runs only their backward (same values,
// ratio exactly 1 as in DeepSpeed-Chat; with the default generation batch = training batch, every micro-batch).
//
// Eval (at the start, every eval_interval rollouts, at the end): greedy answers to the held-out PPO prompts, their
// mean reward-model score (eval/reward) and the mean per-sequence KL to the reference (eval/kl). At the end the
// EMA written by the `ema` hook is evaluated the same way (eval/ema_reward, eval/ema_kl).
//
// Outputs: stage_dir/final (actor, HF folder + tokenizer), stage_dir/critic (save_reward_model), stage_dir/ema
// (the ema hook).
//
// Options (defaults are DeepSpeed-Chat's):
//   actor, critic (required), reference (= actor), reward (= critic)     roles
//   per_device_generation_batch_size 16, per_device_training_batch_size 16, generation_batches 1, ppo_epochs 1,
//   epochs 1 (passes over the PPO prompts), max_steps 0 (cap on actor optimizer steps; 0 = none),
//   gradient_accumulation_steps 1 (doubled for the actor with PTX, as DeepSpeed-Chat does)
//   actor_learning_rate 9.65e-6, critic_learning_rate 5e-6, actor_weight_decay 0, critic_weight_decay 0,
//   lr_scheduler "cosine" (| linear | constant), num_warmup_steps 100, max_grad_norm 1.0,
//   actor_gradient_checkpointing / critic_gradient_checkpointing false
//   actor_lora_dim 0, actor_lora_module_name "", critic_lora_dim 0, critic_lora_module_name "" (0 = no LoRA; the
//   module name filters module paths, "" = every linear the family targets), actor_lora_learning_rate 5e-4,
//   critic_lora_learning_rate 5e-4, only_optimize_lora false (train the adapters and the critic's v_head only).
//   The generation view fuses the actor's adapters for each rollout; final/ and ema/ hold merged weights.
//   kl_ctl 0.1, clip_reward_value 5, cliprange 0.2, cliprange_value 0.2, gamma 1.0, lam 0.95
//   enable_ptx false (needs [data] pretraining texts), unsup_coef 27.8
//   consistency_statistic "max" for fp32 actors, "mean" for bf16/fp16 (| "max"), consistency_threshold (1e-3 for
//   fp32 actors, 0.1 for bf16/fp16), consistency_sample_rows 2 (0 = every row). Low precision compares the mean:
//   its largest difference is rounding-bound (see logprob_agreement), 0.15-0.34 with one 1.05 over 40 rollouts of
//   SmolLM2-135M in bf16, while its mean stays small.
//   eval_interval 0 (rollouts; 0 = start and end only), eval_prompts 0 (0 = every held-out prompt),
//   per_device_eval_batch_size 16, trim_prompt_padding true, save_critic true
//   checkpoint_interval 0 -- rollouts between checkpoints (actor, critic, hooks' state such as the EMA, data
//   position); an interrupted stage resumes from the newest complete one
//   max_nonfinite_steps 3 -- actor (or critic) steps in a row skipped for NaN/inf gradients before the stage stops
//   initial_loss_scale 65536, loss_scale_window 100, min_loss_scale 1 -- fp16 models' dynamic loss scale; an
//   overflow in the actor or the critic skips both steps of that micro-batch (train/overflow_skipped_steps)
//   generation_tensor_parallel false -- the hybrid engine's TP rollouts: every rank holds a Megatron shard of
//   the actor (all ranks form one TP group), the ranks' prompts are generated together and each keeps its rows
//   inference_tp_size 0 -- DeepSpeed-Chat's flag: TP rollouts in groups of this many adjacent ranks (TP x DP:
//   each group decodes its members' prompts); 0 = the whole run when generation_tensor_parallel, else none
//   reuse_experience_forwards true -- the first micro-batch's training forwards are its experience forwards (see
//   above); false runs them twice, as DeepSpeed-Chat does, and frees the experience activations sooner
//   debug_corrupt_generation_logprobs 0 -- a test hook: added to the generation log-probs before the
//   consistency check, so tests can prove that the check stops a run.
// The stage must set `generation = { plugin = ... }`: a plugin cannot create another plugin, so there is no
// built-in default generator.
#include <ATen/ops/cat.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/hybrid_engine.h"
#include "dschat/sdk/interrupt.h"
#include "dschat/sdk/loss_scale.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/ppo_math.h"
#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tensor_parallel.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"
#include "rollout.h"

namespace {

using namespace dschat;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// After the device's queued work: on a GPU the host runs ahead of the kernels it launched.
double seconds_since(Clock::time_point t, at::Device device) {
  dschat::synchronize(device);
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// DESIGN §5 / DeepSpeed-Chat perf.py: 24 k B s L h^2 (1 + s/(6h) + V/(16 L h)).
double megatron_flops(double k, double batch, double seq, const ModelDims& d) {
  const double L = static_cast<double>(d.num_layers), h = static_cast<double>(d.hidden_size);
  const double V = static_cast<double>(d.vocab_size);
  return 24.0 * k * batch * seq * L * h * h * (1.0 + seq / (6.0 * h) + V / (16.0 * L * h));
}

struct PpoOptions {
  std::string actor, critic, reference, reward;
  int64_t generation_batch_size = 16, training_batch_size = 16, generation_batches = 1, ppo_epochs = 1;
  int64_t epochs = 1, max_steps = 0, gradient_accumulation_steps = 1;
  OptimizerOptions actor_optimizer, critic_optimizer;
  int64_t actor_lora_dim = 0, critic_lora_dim = 0;
  std::string actor_lora_module_name, critic_lora_module_name;
  bool only_optimize_lora = false;
  ppo::PpoConfig ppo;
  bool enable_ptx = false;
  double unsup_coef = 27.8;
  std::optional<double> consistency_threshold;  // unset: 1e-3 for fp32 models, 0.1 for bf16 / fp16
  std::optional<std::string> consistency_statistic;  // unset: "max" for fp32 models, "mean" for bf16 / fp16
  int64_t consistency_sample_rows = 2;
  int64_t eval_interval = 0, eval_prompts = 0, eval_batch_size = 16;
  bool trim_prompt_padding = true;
  bool save_critic = true;
  bool generation_tensor_parallel = false;
  int64_t inference_tp_size = 1;  // ranks per TP generation group (resolved: 1 = no TP rollouts)
  bool reuse_experience_forwards = true;
  int64_t checkpoint_interval = 0;  // rollouts between checkpoints (taken after a training flush); 0: none
  int64_t max_nonfinite_steps = 3;  // actor or critic steps in a row skipped for NaN/inf before the stage stops
  double debug_corrupt_generation_logprobs = 0.0;
};

PpoOptions read_options(const ConfigTable& t) {
  PpoOptions o;
  if (!t.has("generation"))  // found by validate, not after the SFT and RM stages have trained
    t.fail_here("the ppo stage generates its rollouts: add generation = { plugin = \"kv-cache\", max_new_tokens = 256 }");
  o.actor = t.get_string("actor");
  o.critic = t.get_string("critic");
  o.reference = t.get_string("reference", o.actor);
  o.reward = t.get_string("reward", o.critic);
  o.generation_batch_size = t.get_int("per_device_generation_batch_size", 16, 1);
  o.training_batch_size = t.get_int("per_device_training_batch_size", 16, 1);
  o.generation_batches = t.get_int("generation_batches", 1, 1);
  o.ppo_epochs = t.get_int("ppo_epochs", 1, 1);
  o.epochs = t.get_int("epochs", 1, 1);
  o.max_steps = t.get_int("max_steps", 0, 0);
  o.checkpoint_interval = t.get_int("checkpoint_interval", 0, 0);
  o.gradient_accumulation_steps = t.get_int("gradient_accumulation_steps", 1, 1);
  const std::string scheduler = t.get_choice("lr_scheduler", {"cosine", "linear", "constant"}, "cosine");
  const int64_t warmup = t.get_int("num_warmup_steps", 100, 0);
  const double clip = t.get_float("max_grad_norm", 1.0, 0.0);
  for (const bool is_actor : {true, false}) {
    OptimizerOptions* opt = is_actor ? &o.actor_optimizer : &o.critic_optimizer;
    const std::string p = is_actor ? "actor" : "critic";
    const double lr = is_actor ? 9.65e-6 : 5e-6;
    opt->learning_rate = t.get_float(p + "_learning_rate", lr, 0.0);
    opt->weight_decay = t.get_float(p + "_weight_decay", 0.0, 0.0);
    opt->gradient_checkpointing = t.get_bool(p + "_gradient_checkpointing", false);
    opt->lora_learning_rate = t.get_float(p + "_lora_learning_rate", 5e-4, 0.0);
    opt->lr_scheduler = scheduler;
    opt->num_warmup_steps = warmup;
    opt->max_grad_norm = clip;
    opt->gradient_accumulation_steps = o.gradient_accumulation_steps;
    read_loss_scale_options(t, *opt);  // one fp16 setting for both, as DeepSpeed-Chat's ds config
  }
  o.actor_lora_dim = t.get_int("actor_lora_dim", 0, 0);
  o.critic_lora_dim = t.get_int("critic_lora_dim", 0, 0);
  o.actor_lora_module_name = t.get_string("actor_lora_module_name", "");
  o.critic_lora_module_name = t.get_string("critic_lora_module_name", "");
  o.only_optimize_lora = t.get_bool("only_optimize_lora", false);
  if (o.only_optimize_lora && o.actor_lora_dim == 0 && o.critic_lora_dim == 0)
    t.fail("only_optimize_lora", "needs actor_lora_dim > 0 or critic_lora_dim > 0");
  o.ppo.kl_coef = t.get_float("kl_ctl", 0.1, 0.0);
  o.ppo.clip_reward_value = t.get_float("clip_reward_value", 5.0, 0.0);
  o.ppo.cliprange = t.get_float("cliprange", 0.2, 0.0);
  o.ppo.cliprange_value = t.get_float("cliprange_value", 0.2, 0.0);
  o.ppo.gamma = t.get_float("gamma", 1.0, 0.0, 1.0);
  o.ppo.lam = t.get_float("lam", 0.95, 0.0, 1.0);
  o.enable_ptx = t.get_bool("enable_ptx", false);
  if (o.enable_ptx && !t.document_has("data.pretraining"))
    t.fail("enable_ptx", "PTX mixes pretraining texts into the actor's steps: list them in [data] pretraining = "
                         "[\"texts.txt\", ...]");
  o.unsup_coef = t.get_float("unsup_coef", 27.8, 0.0);
  if (t.has("consistency_threshold")) o.consistency_threshold = t.get_float("consistency_threshold", {}, 0.0);
  if (t.has("consistency_statistic"))
    o.consistency_statistic = t.get_choice("consistency_statistic", {"max", "mean"}, "max");
  o.consistency_sample_rows = t.get_int("consistency_sample_rows", 2, 0);
  o.eval_interval = t.get_int("eval_interval", 0, 0);
  o.max_nonfinite_steps = t.get_int("max_nonfinite_steps", 3, 1);
  o.eval_prompts = t.get_int("eval_prompts", 0, 0);
  o.eval_batch_size = t.get_int("per_device_eval_batch_size", 16, 1);
  o.trim_prompt_padding = t.get_bool("trim_prompt_padding", true);
  o.save_critic = t.get_bool("save_critic", true);
  o.generation_tensor_parallel = t.get_bool("generation_tensor_parallel", false);
  // The launcher's world, not the process group: validate runs before the group exists (as the tp strategy).
  int64_t world_size = world().size();
  try {
    world_size = std::max<int64_t>(world_size, detect_launch_environment().world_size);
  } catch (const std::invalid_argument&) {  // inconsistent variables: the rendezvous reports them
  }
  const int64_t tp = t.get_int("inference_tp_size", 0, 0);
  if (tp > 0 && world_size % tp != 0)
    t.fail("inference_tp_size", fmt::format("must divide the number of ranks ({}) into TP groups", world_size));
  if (tp > 0 && o.generation_tensor_parallel && tp != world_size)
    t.fail("inference_tp_size", fmt::format("generation_tensor_parallel = true means one TP group of all {} ranks; "
                                            "set one of the two", world_size));
  o.inference_tp_size = tp > 0 ? tp : (o.generation_tensor_parallel ? world_size : 1);
  o.generation_tensor_parallel = o.generation_tensor_parallel || o.inference_tp_size > 1;
  o.reuse_experience_forwards = t.get_bool("reuse_experience_forwards", true);
  // Test hook: added to the generation log-probs before the consistency check, to prove the check trips.
  o.debug_corrupt_generation_logprobs = t.get_float("debug_corrupt_generation_logprobs", 0.0);
  return o;
}

// One rollout's experience, DeepSpeed-Chat's generate_experience output.
struct Experience {
  at::Tensor seq, attention_mask;   // [B, L]; mask = (seq != pad)
  at::Tensor old_logprobs, ref_logprobs, values;  // [B, L - 1]
  at::Tensor score;                 // [B]
  int64_t prompt_length = 0;        // P
  // The first training micro-batch's actor log-probs [b, L - P] and critic values [b, L - 1], still recording
  // autograd: that micro-batch trains on the weights the rollout was made with, so its training forwards are these
  // experience forwards and the step only runs their backward. Undefined when not applicable or already used.
  at::Tensor first_micro_logprobs, first_micro_values;
};

using ppo_rollout::experience_mask;
using ppo_rollout::rows_to_keep;
using ppo_rollout::trim_left_padding;

class Ppo : public Algorithm {
 public:
  explicit Ppo(const ConfigTable& table) : o_(read_options(table)) {}

  DataNeeds data_needs() const override { return {Phase::ppo, false}; }
  std::map<std::string, std::string> model_roles() const override {
    return {{"actor", o_.actor}, {"critic", o_.critic}, {"reference", o_.reference}, {"reward", o_.reward}};
  }

  void run(StageContext& context) override;

 private:
  PpoOptions o_;
};

void Ppo::run(StageContext& ctx) {
  const std::string& stage = ctx.stage_name();
  Generator* generator = ctx.generator();
  if (generator == nullptr)
    throw std::invalid_argument(fmt::format(
        "stage {}: ppo generates answers with the stage's generation plugin; add generation = {{ plugin = "
        "\"kv-cache\", max_new_tokens = 256 }} to the stage",
        stage));
  auto handle = ctx.model("actor");
  auto tokenizer = ctx.tokenizer("actor");
  auto eos = tokenizer->eos_id();
  auto pad_opt = eos ? eos : tokenizer->pad_id();  // DeepSpeed-Chat: pad = eos (every family but LLaMA)
  if (!pad_opt) throw std::invalid_argument("the actor's tokenizer has neither a pad nor an eos token");
  const int64_t pad_id = *pad_opt;

  const auto& data = ctx.data();
  const auto& train = data.tokenized(Phase::ppo, false, *tokenizer);
  const auto& held_out = data.tokenized(Phase::ppo, true, *tokenizer);
  if (train.empty()) throw std::invalid_argument(fmt::format("stage {}: the PPO split has no prompts", stage));
  const auto& ptx_texts = data.pretraining_texts();
  if (o_.enable_ptx && ptx_texts.empty())
    throw std::invalid_argument(fmt::format(
        "stage {}: enable_ptx = true but the pipeline's [data] has no pretraining texts", stage));

  // ---- models ----
  auto actor = ctx.load_model("actor");
  auto reference = ctx.load_model("reference");
  auto critic = std::make_shared<RewardModel>(ctx.load_model("critic"));
  load_value_head(*critic, ctx.model_dir("critic"));
  auto reward = std::make_shared<RewardModel>(ctx.load_model("reward"));
  load_value_head(*reward, ctx.model_dir("reward"));
  for (torch::nn::Module* frozen : {static_cast<torch::nn::Module*>(reference.get()),
                                    static_cast<torch::nn::Module*>(reward.get())}) {
    for (auto& p : frozen->parameters()) p.set_requires_grad(false);
    frozen->eval();
  }

  // LoRA as DeepSpeed-Chat's step 3 adds it: on the trained roles only (the reference and reward stay plain).
  auto add_lora = [&](torch::nn::Module& module, const ModelFamily& family, int64_t dim, const std::string& name,
                      const char* role, const std::vector<std::string>& keep) {
    if (dim == 0) return;
    LoraOptions lora;
    lora.rank = dim;
    const size_t n = enable_lora_where(module, name, family.lora_target_modules(), lora);
    if (o_.only_optimize_lora) freeze_all_but_lora(module, keep);
    std::cout << fmt::format("stage {}: {} LoRA rank {} on {} linears{}\n", stage, role, dim, n,
                             o_.only_optimize_lora ? ", only the adapters trained" : "");
  };
  add_lora(*actor, *handle.family, o_.actor_lora_dim, o_.actor_lora_module_name, "actor", {});
  add_lora(*critic, *ctx.model("critic").family, o_.critic_lora_dim, o_.critic_lora_module_name, "critic",
           {"v_head"});

  // Optimizer steps: DeepSpeed-Chat's num_total_iters (prompt batches x micro-batches per experience x ppo_epochs
  // / accumulation), capped by max_steps.
  auto& comm = world();
  const int64_t global_prompt_batches = (static_cast<int64_t>(train.size()) + o_.generation_batch_size - 1) /
                                        o_.generation_batch_size;
  const int64_t prompt_batches = (global_prompt_batches + comm.size() - 1) / comm.size();  // this rank's share
  const int64_t micro_per_rollout = (o_.generation_batch_size + o_.training_batch_size - 1) / o_.training_batch_size;
  int64_t total = o_.epochs * prompt_batches * micro_per_rollout * o_.ppo_epochs / o_.gradient_accumulation_steps;
  total = std::max<int64_t>(total, 1);
  if (o_.max_steps > 0) total = std::min(total, o_.max_steps);
  OptimizerOptions actor_opt = o_.actor_optimizer, critic_opt = o_.critic_optimizer;
  actor_opt.total_steps = critic_opt.total_steps = total;
  // DeepSpeed-Chat doubles the actor's accumulation with PTX: the PPO and PTX backwards make one step.
  if (o_.enable_ptx) actor_opt.gradient_accumulation_steps *= 2;
  auto actor_engine = ctx.strategy().make_engine(actor, actor, actor_opt);
  auto critic_engine = ctx.strategy().make_engine(critic, critic->base, critic_opt);
  const at::Device device = actor_engine->device();
  reference->to(device);
  reward->to(device);
  const bool exact = actor->dtype() == at::kFloat;
  const double threshold = o_.consistency_threshold.value_or(exact ? 1e-3 : 0.1);
  const bool check_mean = o_.consistency_statistic.value_or(exact ? "max" : "mean") == "mean";
  std::cout << fmt::format(
      "stage {}: {} prompts ({} held out), {} optimizer steps, generation {} x{} prompts, training micro-batch {}, "
      "ppo_epochs {}, pad {}, PTX {}, actor: {}\n",
      stage, train.size(), held_out.size(), total, o_.generation_batches, o_.generation_batch_size,
      o_.training_batch_size, o_.ppo_epochs, pad_id, o_.enable_ptx ? "on" : "off", actor_engine->describe());

  for (const auto& hook : ctx.hooks()) {
    hook->set_model_info({handle.family, tokenizer});
    auto whole = actor_engine->gather_parameters();
    hook->on_train_begin(*actor);
  }

  SamplingOptions sampling = generator->defaults();
  sampling.eos_token_ids = {pad_id};
  if (eos) sampling.eos_token_ids = {*eos};
  sampling.pad_token_id = pad_id;
  const int64_t max_prompt = data.limits().max_prompt_seq_len;
  auto& metrics = ctx.metrics();

  auto prompts_of = [&](const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices) {
    std::vector<const TokenizedExample*> rows;
    for (auto i : indices) rows.push_back(&set[static_cast<size_t>(i)]);
    PromptBatch batch = collate_prompts(rows, max_prompt, pad_id);
    if (o_.trim_prompt_padding) trim_left_padding(batch.input_ids, batch.attention_mask);
    return batch;
  };
  // Log-probs of seq[:, 1:] as [B, L - 1] (DeepSpeed-Chat's layout), computed from position `from` on only (the
  // LM head over the prompt is never read); the columns before `from` are 0.
  auto pad_front = [](const at::Tensor& logp, int64_t from) {
    return from == 0 ? logp : at::cat({at::zeros({logp.size(0), from}, logp.options()), logp}, 1);
  };
  auto answer_logprobs = [&](CausalLM& lm, const at::Tensor& seq, const at::Tensor& mask, int64_t from) {
    auto hidden = lm.forward(seq, mask, nullptr, /*return_hidden=*/true, /*return_logits=*/false).hidden;
    auto logits = lm.lm_logits(hidden.narrow(1, from, hidden.size(1) - 1 - from));
    return pad_front(ppo::logprobs_from_logits(logits, seq.slice(1, from + 1)).to(at::kFloat), from);
  };
  // The training path of the trained roles, shared by the experience and the training step (whose first
  // micro-batch reuses the experience's): the actor's log-probs of seq[:, start + 1:] ([B, L - 1 - start], LM head
  // on those positions only) and the critic's values ([B, L - 1]).
  auto actor_answer_logprobs = [&](const at::Tensor& seq, const at::Tensor& mask, int64_t start) {
    auto logits = actor_engine->forward(seq, mask, {.logits_from = start}).logits;
    return ppo::logprobs_from_logits(logits.slice(1, 0, -1), seq.slice(1, start + 1)).to(at::kFloat);
  };
  auto critic_values = [&](const at::Tensor& seq, const at::Tensor& mask) {
    auto hidden = critic_engine->forward(seq, mask, {.return_hidden = true, .return_logits = false}).hidden;
    return critic->values_from_hidden(hidden).slice(1, 0, -1).to(at::kFloat);
  };

  // ---- eval: greedy answers to held-out prompts, mean reward score and mean KL to the reference ----
  std::vector<int64_t> eval_indices;
  const int64_t n_eval = o_.eval_prompts > 0 ? std::min<int64_t>(o_.eval_prompts, held_out.size())
                                             : static_cast<int64_t>(held_out.size());
  for (int64_t i = 0; i < n_eval; ++i) eval_indices.push_back(i);
  auto evaluate = [&](CausalLM& lm, int64_t step, const std::string& prefix) {
    if (eval_indices.empty()) return;
    // ZeRO-3: the actor's weights whole for the whole evaluation (every rank evaluates the same prompts).
    auto whole = &lm == actor.get() ? actor_engine->gather_parameters() : nullptr;
    double score_sum = 0.0, kl_sum = 0.0, len_sum = 0.0;
    std::string sample;
    SamplingOptions greedy = sampling;
    greedy.do_sample = false;
    for (size_t begin = 0; begin < eval_indices.size(); begin += o_.eval_batch_size) {
      std::vector<int64_t> idx(eval_indices.begin() + begin,
                               eval_indices.begin() + std::min(eval_indices.size(), begin + o_.eval_batch_size));
      PromptBatch batch = prompts_of(held_out, idx);
      GenerationResult out;
      {
        GenerationView view(lm);
        out = generator->generate(lm, batch.input_ids.to(device), batch.attention_mask.to(device), greedy);
      }
      at::NoGradGuard no_grad;
      const int64_t P = out.prompt_length;
      auto seq = out.sequences;
      auto mask = experience_mask(seq, pad_id);
      auto score = ppo_rollout::rollout_scores(*reward, seq, pad_id, P);
      auto logp = answer_logprobs(lm, seq, mask, P - 1);
      auto ref = answer_logprobs(*reference, seq, mask, P - 1);
      auto action = mask.slice(1, P).to(at::kFloat);  // actions from start = P - 1
      kl_sum += ((logp.slice(1, P - 1) - ref.slice(1, P - 1)) * action).sum().item<double>();
      score_sum += score.sum().item<double>();
      len_sum += out.answer_mask.sum().item<double>();
      if (sample.empty()) {
        auto row = out.sequences[0].slice(0, P).to(at::kCPU);
        std::vector<int64_t> ids(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
        sample = tokenizer->decode(ids, /*skip_special_tokens=*/true);
      }
    }
    const double n = static_cast<double>(eval_indices.size());
    metrics.scalar(prefix + "reward", score_sum / n, step);
    metrics.scalar(prefix + "kl", kl_sum / n, step);
    metrics.scalar(prefix + "answer_len", len_sum / n, step);
    std::cout << fmt::format("stage {}: step {} {}reward {:.4f} {}kl {:.4f} answer_len {:.1f} ({} prompts); e.g. "
                             "\"{}\"\n",
                             stage, step, prefix, score_sum / n, prefix, kl_sum / n, len_sum / n, eval_indices.size(),
                             sample);
  };

  // ---- PTX: pretraining texts as eos-joined blocks of max_seq_len tokens (DeepSpeed-Chat's group_texts) ----
  std::vector<std::vector<int64_t>> ptx_blocks;
  size_t ptx_next = 0;
  if (o_.enable_ptx) {
    const int64_t block = data.limits().max_seq_len;
    std::vector<int64_t> stream;
    for (const auto& text : ptx_texts) {
      auto ids = tokenizer->encode(text, /*add_special_tokens=*/true);
      stream.insert(stream.end(), ids.begin(), ids.end());
      stream.push_back(pad_id);
    }
    for (size_t i = 0; i + block <= stream.size(); i += block)
      ptx_blocks.emplace_back(stream.begin() + i, stream.begin() + i + block);
    if (ptx_blocks.empty()) ptx_blocks.push_back(stream);
  }

  // ---- TP rollouts: one Megatron shard of the actor per rank, refreshed from the (whole) actor each rollout ----
  std::shared_ptr<CausalLM> tp_shard;
  // TP x DP: groups of inference_tp_size adjacent ranks (made here, on every rank, in the same order).
  Mesh mesh;
  if (o_.generation_tensor_parallel && o_.inference_tp_size < comm.size())
    mesh = make_mesh(comm, comm.size() / static_cast<int>(o_.inference_tp_size), static_cast<int>(o_.inference_tp_size));
  Communicator& tp_group = mesh.tp ? *mesh.tp : comm;
  auto generate_tensor_parallel = [&](const PromptBatch& batch, const SamplingOptions& options) {
    GenerationView view(*actor);  // LoRA fused, eval, no grad: the shard copies what generation would see
    if (!tp_shard) {
      tp_shard = make_tensor_parallel_shard(*handle.family, *actor, tp_group);
    } else {
      refresh_tensor_parallel_shard(*tp_shard, *handle.family, *actor);
    }
    tp_shard->eval();
    // Every rank of the TP group decodes the group's prompts (left-padded to the longest), in lockstep, and keeps its rows.
    const int64_t rows = batch.input_ids.size(0);
    const auto P = static_cast<int64_t>(tp_group.max(static_cast<double>(batch.input_ids.size(1))));
    TORCH_CHECK(static_cast<int64_t>(tp_group.max(static_cast<double>(rows))) == rows,
                "TP rollouts need the same number of prompts on every rank of a TP group");
    auto left_pad = [&](const at::Tensor& t, int64_t value) {
      return at::cat({at::full({rows, P - t.size(1)}, value, t.options()), t}, 1).contiguous();
    };
    at::Tensor ids = left_pad(batch.input_ids.to(device), pad_id), mask = left_pad(batch.attention_mask.to(device), 0);
    at::Tensor all_ids = at::empty({rows * tp_group.size(), P}, ids.options());
    at::Tensor all_mask = at::empty({rows * tp_group.size(), P}, mask.options());
    tp_group.all_gather(all_ids, ids);
    tp_group.all_gather(all_mask, mask);
    GenerationResult all = generator->generate(*tp_shard, all_ids, all_mask, options);
    GenerationResult mine;
    const int64_t first = tp_group.rank() * rows;
    mine.prompt_length = all.prompt_length;
    mine.sequences = all.sequences.narrow(0, first, rows).contiguous();
    mine.attention_mask = all.attention_mask.narrow(0, first, rows).contiguous();
    mine.answer_mask = all.answer_mask.narrow(0, first, rows).contiguous();
    mine.logprobs = all.logprobs.narrow(0, first, rows).contiguous();
    return mine;
  };

  // ---- experience ----
  std::optional<Experience> last_valid;
  int64_t rollout = 0;
  // first_of_flush: no optimizer step happens between this rollout and the training of its first micro-batch.
  auto make_experience = [&](const std::vector<int64_t>& indices, bool first_of_flush, double& gen_s, double& exp_s)
      -> std::optional<Experience> {
    PromptBatch batch = prompts_of(train, indices);
    SamplingOptions options = sampling;
    options.seed = ctx.seed() * 1000003ULL + static_cast<uint64_t>(rollout);
    auto t0 = Clock::now();
    GenerationResult out;
    // The hybrid engine: under ZeRO-3 the actor is gathered once for the rollout (not per token or block) and
    // released after the consistency check.
    auto whole = actor_engine->gather_parameters();
    if (o_.generation_tensor_parallel) {
      out = generate_tensor_parallel(batch, options);
    } else {
      GenerationView view(*actor);
      out = generator->generate(*actor, batch.input_ids.to(device), batch.attention_mask.to(device), options);
    }
    gen_s = seconds_since(t0, device);
    t0 = Clock::now();
    const int64_t P = out.prompt_length;
    auto gen_logprobs = out.logprobs;
    if (o_.debug_corrupt_generation_logprobs != 0.0)
      gen_logprobs = (gen_logprobs + o_.debug_corrupt_generation_logprobs) * out.answer_mask.to(at::kFloat);
    const auto agreement = logprob_agreement(*actor, out.sequences, out.attention_mask, P, gen_logprobs,
                                             o_.consistency_sample_rows);
    whole.reset();
    metrics.scalar("consistency/max_abs_diff", agreement.max_abs_diff, actor_engine->global_step());
    metrics.scalar("consistency/mean_abs_diff", agreement.mean_abs_diff, actor_engine->global_step());
    const double diff = check_mean ? agreement.mean_abs_diff : agreement.max_abs_diff;
    if (!(diff <= threshold))
      throw ConsistencyError(fmt::format(
          "stage {}: rollout {}: the generation path's log-probs differ from the training path's by {:.3g} ({} "
          "over the compared tokens; consistency_threshold {:.3g}); the hybrid engine's generation view or the "
          "generation plugin computes a different model than training does (LoRA fusion, cache, positions, masks "
          "or dtype)",
          stage, rollout, diff, check_mean ? "mean" : "largest", threshold));

    auto keep = rows_to_keep(out.sequences, P, pad_id);
    const int64_t dropped = out.sequences.size(0) - keep.size(0);
    metrics.scalar("rollout/dropped_rows", static_cast<double>(dropped), actor_engine->global_step());
    // Ranks train in lockstep: a rollout that is empty on any rank is skipped (or replaced) on every rank.
    if (comm.max(keep.size(0) == 0 ? 1.0 : 0.0) > 0.0) {
      // DeepSpeed-Chat reuses the last valid batch when every answer is too short.
      std::cout << fmt::format("stage {}: rollout {}: every answer has <= 1 token; {}\n", stage, rollout,
                               last_valid ? "reusing the previous rollout" : "skipping it");
      return last_valid;
    }
    Experience e;
    e.prompt_length = P;
    e.seq = out.sequences.index_select(0, keep);
    e.attention_mask = experience_mask(e.seq, pad_id);
    // DeepSpeed-Chat computes the old log-probs and values in train mode (its scripts set dropout 0), as training
    // does, so the first micro-batch's forwards can serve both.
    actor_engine->train(true);
    critic_engine->train(true);
    auto logprobs_of_rows = [&](int64_t r0, int64_t r1) {
      return actor_answer_logprobs(e.seq.slice(0, r0, r1), e.attention_mask.slice(0, r0, r1), P - 1);
    };
    auto values_of_rows = [&](int64_t r0, int64_t r1) {
      return critic_values(e.seq.slice(0, r0, r1), e.attention_mask.slice(0, r0, r1));
    };
    const int64_t B = e.seq.size(0);
    const int64_t recorded =
        first_of_flush && o_.reuse_experience_forwards ? std::min(B, o_.training_batch_size) : 0;
    if (recorded > 0) {
      e.first_micro_logprobs = logprobs_of_rows(0, recorded);
      e.first_micro_values = values_of_rows(0, recorded);
    }
    at::NoGradGuard no_grad;
    auto with_recorded = [&](const at::Tensor& first, auto&& compute) {
      if (recorded == B) return first.detach();
      auto rest = compute(recorded, B);
      return recorded == 0 ? rest : at::cat({first.detach(), rest}, 0);
    };
    e.old_logprobs = pad_front(with_recorded(e.first_micro_logprobs, logprobs_of_rows), P - 1);
    e.values = with_recorded(e.first_micro_values, values_of_rows);
    e.ref_logprobs = answer_logprobs(*reference, e.seq, e.attention_mask, P - 1);
    e.score = ppo_rollout::rollout_scores(*reward, e.seq, pad_id, P).to(at::kFloat);
    exp_s = seconds_since(t0, device);
    last_valid = e;
    last_valid->first_micro_logprobs = last_valid->first_micro_values = at::Tensor();  // a reuse trains afresh
    return e;
  };

  // ---- training on buffered experience ----
  bool stop = false;
  NonFiniteGuard actor_nonfinite(ctx.stage_name(), o_.max_nonfinite_steps);
  NonFiniteGuard critic_nonfinite(ctx.stage_name(), o_.max_nonfinite_steps);
  auto after_actor_step = [&](const StepResult& r) {
    actor_nonfinite.skipped(r, actor_engine->global_step(), "actor");
    if (!r.applied || ctx.hooks().empty()) return;
    auto whole = actor_engine->gather_parameters();  // the EMA reads every weight (ZeRO-3: gathered)
    for (const auto& hook : ctx.hooks()) hook->after_optimizer_step(*actor, {actor_engine->global_step()});
  };
  // PTX: the actor's causal-LM loss on pretraining text, accumulated with its PPO loss (the accumulation is
  // doubled for it, so the actor's boundary comes after this backward).
  auto ptx_backward = [&] {
    std::vector<at::Tensor> rows;
    for (int64_t i = 0; i < o_.training_batch_size; ++i) {
      const auto& b = ptx_blocks[ptx_next++ % ptx_blocks.size()];
      rows.push_back(at::tensor(b, at::kLong));
    }
    auto ids = at::stack(rows).to(device);
    auto mask = at::ones_like(ids);
    auto logits = actor_engine->forward(ids, mask).logits;
    const int64_t V = logits.size(-1);
    auto loss = at::cross_entropy_loss(logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V}),
                                       ids.slice(1, 1).reshape({-1}));
    actor_engine->backward(loss * o_.unsup_coef);
    return loss.item<double>();
  };
  struct TrainStats {
    double actor_loss = 0, critic_loss = 0, ptx_loss = 0;
    int64_t micro = 0, rows = 0, overflow_skips = 0;
  };
  // fp16: an overflow in either model skips both steps, so both backward passes come before either step (the
  // models are apart and the passes run in the same order, so only the skipping differs). Otherwise
  // DeepSpeed-Chat's order, in which the actor's gradients are freed before the critic's pass.
  const bool fp16_pair = actor->dtype() == at::kHalf || critic->base->dtype() == at::kHalf;
  auto train_on = [&](std::vector<Experience>& buffer) {
    TrainStats s;
    actor_engine->train(true);
    critic_engine->train(true);
    for (int64_t ep = 0; ep < o_.ppo_epochs && !stop; ++ep) {
      for (auto& e : buffer) {
        const int64_t B = e.seq.size(0), start = e.prompt_length - 1;
        // Every rank takes as many micro-batches as the rank with the most rows (a rank with fewer rows after
        // dropping short answers wraps around), so that the collectives line up.
        const int64_t local_micro = (B + o_.training_batch_size - 1) / o_.training_batch_size;
        const auto micro_batches = static_cast<int64_t>(comm.max(static_cast<double>(local_micro)));
        for (int64_t k = 0; k < micro_batches && !stop; ++k) {
          const int64_t r0 = (k % local_micro) * o_.training_batch_size;
          const int64_t r1 = std::min(B, r0 + o_.training_batch_size);
          auto seq = e.seq.slice(0, r0, r1), mask = e.attention_mask.slice(0, r0, r1);
          auto old_logp = e.old_logprobs.slice(0, r0, r1), ref_logp = e.ref_logprobs.slice(0, r0, r1);
          auto action_mask = mask.slice(1, 1);
          at::Tensor old_values = e.values.slice(0, r0, r1).clone(), advantages, returns;
          {
            at::NoGradGuard no_grad;
            auto rewards = ppo::compute_rewards(old_logp, ref_logp, e.score.slice(0, r0, r1), action_mask, start,
                                                o_.ppo);
            ppo::mask_after_end(rewards, old_values, action_mask, start);
            auto ar = ppo::get_advantages_and_returns(old_values, rewards, start, o_.ppo);
            advantages = ar.advantages;
            returns = ar.returns;
          }
          auto m = action_mask.slice(1, start).to(at::kFloat);
          // The experience forwards recorded for this micro-batch (the first, on unchanged weights), used once.
          const bool recorded = k == 0 && e.first_micro_logprobs.defined();
          // actor
          auto logp = recorded ? std::exchange(e.first_micro_logprobs, at::Tensor())
                               : actor_answer_logprobs(seq, mask, start);
          auto a_loss = ppo::actor_loss(logp, old_logp.slice(1, start), advantages, m, o_.ppo);
          actor_engine->backward(a_loss);
          if (!fp16_pair) after_actor_step(actor_engine->step());  // not yet a boundary with PTX
          if (o_.enable_ptx) s.ptx_loss += ptx_backward();
          if (o_.enable_ptx && !fp16_pair) after_actor_step(actor_engine->step());
          // critic
          auto values = recorded ? std::exchange(e.first_micro_values, at::Tensor()) : critic_values(seq, mask);
          auto c_loss = ppo::critic_loss(values.slice(1, start), old_values.slice(1, start), returns, m, o_.ppo);
          critic_engine->backward(c_loss);
          StepOptions together;
          if (fp16_pair) {
            const bool actor_overflow = actor_engine->gradients_overflowed();  // both asked: each is collective
            const bool critic_overflow = critic_engine->gradients_overflowed();
            together.skip = actor_overflow || critic_overflow;
            if (together.skip) ++s.overflow_skips;
            after_actor_step(actor_engine->step(together));
          }
          critic_nonfinite.skipped(critic_engine->step(together), critic_engine->global_step(), "critic");
          s.actor_loss += a_loss.item<double>();
          s.critic_loss += c_loss.item<double>();
          ++s.micro;
          s.rows += r1 - r0;
          if (o_.max_steps > 0 && actor_engine->global_step() >= o_.max_steps) stop = true;
        }
      }
    }
    return s;
  };

  // ---- the loop ----
  // ---- checkpoints: <stage>/checkpoints/step-N/{actor,critic,hook-I}, complete once ppo.json is written ----
  const fs::path checkpoints = ctx.stage_dir() / "checkpoints";
  auto save_checkpoint = [&](int64_t epoch, int64_t next_batch) {
    const fs::path dir = checkpoints / fmt::format("step-{}", actor_engine->global_step());
    nlohmann::json position = {{"epoch", epoch}, {"next_batch", next_batch}, {"rollout", rollout},
                               {"ptx_next", ptx_next}, {"world_size", comm.size()}};
    actor_engine->save_checkpoint(dir / "actor", position);
    critic_engine->save_checkpoint(dir / "critic", position);
    if (comm.is_main()) {
      for (size_t i = 0; i < ctx.hooks().size(); ++i) ctx.hooks()[i]->save_state(dir / fmt::format("hook-{}", i));
      write_file_atomic(dir / "ppo.json", position.dump(2) + "\n");  // last: the checkpoint is complete
      prune_checkpoints(ctx.stage_dir(), 2, "ppo.json");  // keep the two newest
    }
    comm.barrier();
  };
  int64_t start_epoch = 0, start_batch = 0;
  const std::optional<fs::path> resume_from = latest_checkpoint(ctx.stage_dir(), "ppo.json");
  if (resume_from) {
    auto position = actor_engine->load_checkpoint(*resume_from / "actor");
    critic_engine->load_checkpoint(*resume_from / "critic");
    for (size_t i = 0; i < ctx.hooks().size(); ++i)
      ctx.hooks()[i]->load_state(*resume_from / fmt::format("hook-{}", i));
    start_epoch = position.at("epoch").get<int64_t>();
    start_batch = position.at("next_batch").get<int64_t>();
    rollout = position.at("rollout").get<int64_t>();
    ptx_next = position.at("ptx_next").get<size_t>();
    std::cout << fmt::format("stage {}: resuming from {} (step {}, epoch {}, prompt batch {})\n", stage,
                             resume_from->string(), actor_engine->global_step(), start_epoch, start_batch);
    metrics.truncate_after(actor_engine->global_step());  // drop what the interrupted attempt logged after it
  } else {
    metrics.truncate_after(-1);
    evaluate(*actor, 0, "eval/");
  }
  ctx.progress().start(stage, total);
  const auto& dims = actor->dims();
  const auto& cdims = critic->base->dims();
  const double k_actor = actor_opt.gradient_checkpointing ? 4.0 : 3.0;
  const double k_critic = critic_opt.gradient_checkpointing ? 4.0 : 3.0;
  std::vector<Experience> buffer;
  double buf_gen_s = 0, buf_exp_s = 0, buf_gen_flops = 0, buf_rollout_rows = 0, reward_sum = 0, kl_sum = 0;
  auto flush = [&] {
    if (buffer.empty()) return;
    // The means over every rank's rollouts.
    reward_sum = comm.sum(reward_sum);
    kl_sum = comm.sum(kl_sum);
    buf_rollout_rows = comm.sum(buf_rollout_rows);
    auto t0 = Clock::now();
    TrainStats s = train_on(buffer);
    const double train_s = seconds_since(t0, device);
    const int64_t step = actor_engine->global_step();
    double train_flops = 0;
    for (const auto& e : buffer) {
      const double B = static_cast<double>(e.seq.size(0)) * o_.ppo_epochs, L = static_cast<double>(e.seq.size(1));
      train_flops += megatron_flops(k_actor, B, L, dims) + megatron_flops(k_critic, B, L, cdims);
    }
    const double n = static_cast<double>(std::max<int64_t>(s.micro, 1));
    metrics.scalar("reward/mean", reward_sum / buf_rollout_rows, step);
    metrics.scalar("kl/mean", kl_sum / buf_rollout_rows, step);
    metrics.scalar("actor/loss", s.actor_loss / n, step);
    metrics.scalar("critic/loss", s.critic_loss / n, step);
    if (o_.enable_ptx) metrics.scalar("ptx/loss", s.ptx_loss / n, step);
    if (fp16_pair) metrics.scalar("train/overflow_skipped_steps", static_cast<double>(s.overflow_skips), step);
    metrics.scalar("actor/lr", actor_engine->lr(), step);
    metrics.scalar("time/generation_s", buf_gen_s, step);
    metrics.scalar("time/experience_s", buf_exp_s, step);
    metrics.scalar("time/training_s", train_s, step);
    metrics.scalar("samples_per_s", buf_rollout_rows / (buf_gen_s + buf_exp_s + train_s), step);
    metrics.scalar("tflops_generation", buf_gen_flops / buf_gen_s / 1e12, step);
    metrics.scalar("tflops_training", train_flops / train_s / 1e12, step);
    if (device.is_cuda()) metrics.scalar("memory/peak_gpu_bytes", static_cast<double>(peak_device_memory(device)), step);
    ctx.progress().update(step,
                          {{"reward", reward_sum / buf_rollout_rows},
                           {"kl", kl_sum / buf_rollout_rows},
                           {"actor_loss", s.actor_loss / n},
                           {"critic_loss", s.critic_loss / n}},
                          static_cast<int64_t>(buf_rollout_rows));
    buffer.clear();
    buf_gen_s = buf_exp_s = buf_gen_flops = buf_rollout_rows = reward_sum = kl_sum = 0;
  };

  for (int64_t epoch = start_epoch; epoch < o_.epochs && !stop; ++epoch) {
    const auto batches = rank_batches(
        epoch_batches(static_cast<int64_t>(train.size()), o_.generation_batch_size, ctx.seed(), epoch), comm.rank(),
        comm.size());
    for (size_t b = epoch == start_epoch ? static_cast<size_t>(start_batch) : 0; b < batches.size(); ++b) {
      if (stop) break;
      const auto& indices = batches[b];
      double gen_s = 0, exp_s = 0;
      auto e = make_experience(indices, buffer.empty(), gen_s, exp_s);
      ++rollout;
      if (!e) continue;
      {
        at::NoGradGuard no_grad;
        const int64_t P = e->prompt_length;
        auto action = e->attention_mask.slice(1, P).to(at::kFloat);
        kl_sum += ((e->old_logprobs.slice(1, P - 1) - e->ref_logprobs.slice(1, P - 1)) * action).sum().item<double>();
        reward_sum += e->score.sum().item<double>();
      }
      buf_gen_s += gen_s;
      buf_exp_s += exp_s;
      buf_rollout_rows += static_cast<double>(e->seq.size(0));
      // Generation as DeepSpeed-Chat counts it: forward-only (k = 1) over the whole sequence.
      buf_gen_flops += megatron_flops(1.0, static_cast<double>(indices.size()), static_cast<double>(e->seq.size(1)),
                                      dims);
      buffer.push_back(std::move(*e));
      if (static_cast<int64_t>(buffer.size()) == o_.generation_batches) {
        flush();
        const bool epoch_end = b + 1 == batches.size();
        auto save = [&] { save_checkpoint(epoch_end ? epoch + 1 : epoch, epoch_end ? 0 : static_cast<int64_t>(b) + 1); };
        const bool periodic = o_.checkpoint_interval > 0 && rollout % o_.checkpoint_interval == 0;
        if (periodic) save();
        if (const int sig = stop_signal_everywhere()) {  // after a training flush: nothing buffered is lost
          if (!periodic) save();
          ctx.progress().finish();
          metrics.flush();
          throw StopRequested(sig, fmt::format("stopped by {} after rollout {} (step {}); checkpoint {}",
                                               signal_name(sig), rollout, actor_engine->global_step(),
                                               (checkpoints / fmt::format("step-{}", actor_engine->global_step())).string()));
        }
      }
      if (o_.eval_interval > 0 && rollout % o_.eval_interval == 0)
        evaluate(*actor, actor_engine->global_step(), "eval/");
    }
  }
  flush();
  ctx.progress().finish();
  const int64_t final_step = actor_engine->global_step();
  evaluate(*actor, final_step, "eval/");

  // The EMA is the same on every rank; rank 0 writes it, the others wait before reading it back.
  {
    auto whole = actor_engine->gather_parameters();
    if (comm.is_main())
      for (const auto& hook : ctx.hooks()) hook->on_train_end(*actor, ctx.stage_dir());
  }
  comm.barrier();
  // The EMA (written by the `ema` hook) evaluated the same way as the actor.
  const fs::path ema_dir = ctx.stage_dir() / "ema";
  if (fs::exists(ema_dir / "config.json")) {
    auto ema = handle.family->from_pretrained(ema_dir, handle.options);
    ema->to(device);
    evaluate(*ema, final_step, "eval/ema_");
  }

  const fs::path final_dir = ctx.stage_dir() / "final";
  auto actor_whole = actor_engine->gather_parameters();
  auto critic_whole = critic_engine->gather_parameters();
  if (!comm.is_main()) return;
  handle.family->export_hf(*actor, final_dir);
  tokenizer->save(final_dir);
  if (o_.save_critic) {
    nlohmann::json conventions = {{"pad_token_id", pad_id}};
    std::ifstream in(ctx.model_dir("critic") / "reward_model.json");
    if (in) conventions = nlohmann::json::parse(in);
    save_reward_model(*critic, *ctx.model("critic").family, ctx.tokenizer("critic").get(), ctx.stage_dir() / "critic",
                      conventions);
  }
}

}  // namespace

DSCHAT_PLUGIN("ppo", "0.1.0", "DeepSpeed-Chat step 3: PPO with a reward model (hybrid engine, EMA, PTX)") {
  registrar.add<dschat::Algorithm>("ppo", "PPO: actor + critic trained on the reward model's scores",
                                   [](const dschat::ConfigTable& options) { return std::make_shared<Ppo>(options); });
}
