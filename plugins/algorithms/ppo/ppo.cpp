// Algorithm "ppo": DeepSpeed-Chat step 3 (dschat/rlhf/ppo_trainer.py + step3 main.py), with the hybrid engine's
// generation view, the EMA hook and optional PTX mixing.
//
// Roles: actor (trained, e.g. the sft stage), critic (trained, e.g. the rm stage), reference (frozen, default: the
// actor's model) and reward (frozen, default: the critic's model). A stage that lists `rewards` (reward plugins:
// reward-model, exact-answer, length-penalty, summed with their weights) scores with them instead of the reward
// role.
//
// Per prompt batch (a rollout): generate answers inside a GenerationView on the actor with the stage's generation
// plugin (eos and pad = the tokenizer's eos, as DeepSpeed-Chat sets pad = eos); compare the generation path's
// log-probs with the training path's on a few rows (consistency/max_abs_diff; past consistency_threshold the run
// stops); drop rows whose answer has <= 1 non-pad token; with attention_mask = (seq != pad) -- DeepSpeed-Chat's
// mask, which also hides OPT's BOS (== pad) and a generated eos -- compute old log-probs (actor), ref log-probs,
// values over [:, :-1] (critic) and the reward (the reward model's score at the last token before the first pad
// after the prompt, or the stage's rewards' sum). Once generation_batches rollouts are buffered: ppo_epochs
// passes over per_device_training_batch_size micro-batches, each an actor step (then a PTX step when enabled),
// the hooks' after_optimizer_step, and a critic step; the math is dschat/sdk/ppo_math.h.
//
// One forward fewer per model than DeepSpeed-Chat: the first micro-batch after a rollout trains on the weights the
// rollout was made with, so its actor and critic training forwards equal the experience forwards of its rows.
// Those rows' experience forwards record autograd and the training step runs only their backward (same values,
// ratio exactly 1 as in DeepSpeed-Chat; with the default generation batch = training batch, every micro-batch).
//
// Eval (at the start, every eval_interval rollouts, at the end): greedy answers to the held-out PPO prompts, their
// mean reward (eval/reward) and the mean per-sequence KL to the reference (eval/kl). At the end the
// EMA written by the `ema` hook is evaluated the same way (eval/ema_reward, eval/ema_kl).
//
// Outputs: stage_dir/final (actor, HF folder + tokenizer), stage_dir/critic (save_reward_model), stage_dir/ema
// (the ema hook).
//
// Options (defaults are DeepSpeed-Chat's):
//   actor, critic (required), reference (= actor), reward (= critic)     roles
//   rewards [] -- [{ plugin = "exact-answer", weight = 1.0, ... }, ...]: reward plugins in place of `reward`
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
//   each group decodes its members' prompts); 0 = the whole run when generation_tensor_parallel, else none.
//   Both are for data-parallel strategies: under strategy 'tp' the actor and critic train split already, and a
//   replica's ranks generate the same rollouts on the gathered actor
//   reuse_experience_forwards true -- the first micro-batch's training forwards are its experience forwards (see
//   above); false runs them twice, as DeepSpeed-Chat does, and frees the experience activations sooner
//   offload_reference_model false, offload_reward_model false -- DeepSpeed-Chat's flags: the frozen model's
//   blocks kept in host memory and copied to the device block by block (nothing changes on a CPU run); under zero
//   stage 3 the frozen models' blocks are sharded over the ranks in any case (dschat/sdk/frozen_model.h)
//   reference_dtype, reward_dtype (unset: the model's [models.X] dtype) -- "bf16" | "fp16" | "fp32": the frozen
//   reference and reward models in that dtype, halving their memory next to an fp32 actor and critic (the KL
//   then compares the actor against a rounded reference: small but not zero on the first rollout)
//   debug_corrupt_generation_logprobs 0 -- a test hook: added to the generation log-probs before the
//   consistency check, so tests can prove that the check stops a run.
// The stage must set `generation = { plugin = ... }`: a plugin cannot create another plugin, so there is no
// built-in default generator.
#include <ATen/ops/cat.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/ones_like.h>
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
#include "dschat/sdk/rlhf/evaluator.h"
#include "dschat/sdk/rlhf/ptx.h"
#include "dschat/sdk/rlhf/consistency.h"
#include "dschat/sdk/rlhf/rewards.h"
#include "dschat/sdk/rlhf/rollout.h"
#include "dschat/sdk/rlhf/stage_checkpoint.h"
#include "dschat/sdk/rlhf/stage_outputs.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"

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
  rlhf::ConsistencyCheckConfig consistency;
  int64_t eval_interval = 0, eval_prompts = 0, eval_batch_size = 16;
  bool trim_prompt_padding = true;
  bool save_critic = true;
  bool generation_tensor_parallel = false;
  int64_t inference_tp_size = 1;  // ranks per TP generation group (resolved: 1 = no TP rollouts)
  bool reuse_experience_forwards = true;
  std::optional<at::ScalarType> reference_dtype, reward_dtype;  // frozen models' dtype; unset: their model's
  bool offload_reference_model = false, offload_reward_model = false;  // DeepSpeed-Chat's flags
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
  // The stage's rewards replace the reward role (default: the critic's model, as DeepSpeed-Chat).
  if (t.has("rewards") && t.has("reward"))
    t.fail("reward", "the stage lists rewards, which replace the reward model: add it to the list instead, "
                     "rewards = [{ plugin = \"reward-model\", model = \"<model>\" }, ...]");
  o.reward = t.has("rewards") ? "" : t.get_string("reward", o.critic);
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
  o.consistency = rlhf::read_consistency_check(t);
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
  for (auto [key, dtype] : {std::pair{"reference_dtype", &o.reference_dtype}, std::pair{"reward_dtype", &o.reward_dtype}})
    if (t.has(key)) {
      const std::string name = t.get_choice(key, {"fp32", "bf16", "fp16"}, "fp32");
      *dtype = name == "bf16" ? at::kBFloat16 : name == "fp16" ? at::kHalf : at::kFloat;
    }
  o.offload_reference_model = t.get_bool("offload_reference_model", false);
  o.offload_reward_model = t.get_bool("offload_reward_model", false);
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
  int64_t prompts = 0;              // rows generated (before dropping short answers)
  double generation_seconds = 0.0, consistency_seconds = 0.0, experience_seconds = 0.0;
};

struct TrainStats {
  double actor_loss = 0, critic_loss = 0, ptx_loss = 0;
  int64_t micro = 0, rows = 0, overflow_skips = 0;
};

// DeepSpeed-Chat's DeepSpeedPPOTrainer: the models and engines of one PPO stage, and its four steps.
class PpoTrainer {
 public:
  PpoTrainer(const PpoOptions& options, StageContext& context);

  // One rollout and its experience; nullopt when every row on some rank is too short and there is nothing to
  // reuse. `first_of_flush`: no optimizer step comes between it and the training of its first micro-batch.
  std::optional<Experience> generate_experience(const std::vector<int64_t>& indices, bool first_of_flush);
  // ppo_epochs passes over the buffered experience, one actor (+ PTX) and critic step per micro-batch.
  TrainStats train_step(std::vector<Experience>& buffer);
  void evaluate(CausalLM& model, int64_t step, const std::string& prefix);
  void save(int64_t epoch, int64_t next_batch);
  // The newest complete checkpoint, if any: the (epoch, prompt batch) to continue from.
  std::optional<std::pair<int64_t, int64_t>> restore();
  // The stage: resume or evaluate, the rollout / training loop, the final evaluations and outputs.
  void run();

 private:
  at::Tensor actor_answer_logprobs(const at::Tensor& seq, const at::Tensor& mask, int64_t start);
  at::Tensor critic_values(const at::Tensor& seq, const at::Tensor& mask);
  double ptx_backward();
  void after_actor_step(const StepResult& r);
  void add_lora(torch::nn::Module& module, const ModelFamily& family, int64_t dim, const std::string& name,
                const char* role, const std::vector<std::string>& keep);
  void flush(std::vector<Experience>& buffer);
  void finish();

  const PpoOptions& o_;
  StageContext& ctx_;
  const std::string stage_;
  Communicator& comm_;
  MetricsSink& metrics_;
  ModelHandle handle_;
  std::shared_ptr<Tokenizer> tokenizer_;
  int64_t pad_id_ = 0;
  const std::vector<TokenizedExample>& train_;
  std::shared_ptr<CausalLM> actor_, reference_;
  std::shared_ptr<RewardModel> critic_;
  OptimizerOptions actor_opt_, critic_opt_;
  int64_t total_steps_ = 1;
  std::unique_ptr<Engine> actor_engine_, critic_engine_;
  at::Device device_{at::kCPU};
  bool fp16_pair_ = false;
  SamplingOptions sampling_;
  std::unique_ptr<rlhf::RolloutCollector> collector_;
  std::unique_ptr<rlhf::RewardSum> rewards_;
  std::unique_ptr<rlhf::Evaluator> evaluator_;
  rlhf::PtxStream ptx_;
  NonFiniteGuard actor_nonfinite_, critic_nonfinite_;
  std::optional<Experience> last_valid_;
  int64_t rollout_ = 0;
  bool stop_ = false;
};

PpoTrainer::PpoTrainer(const PpoOptions& options, StageContext& context)
    : o_(options), ctx_(context), stage_(context.stage_name()), comm_(world()), metrics_(context.metrics()),
      handle_(context.model("actor")), tokenizer_(context.tokenizer("actor")),
      train_(context.data().tokenized(Phase::ppo, false, *tokenizer_)),
      actor_nonfinite_(context.stage_name(), options.max_nonfinite_steps),
      critic_nonfinite_(context.stage_name(), options.max_nonfinite_steps) {
  // Under the tp strategy the ranks of a replica train one actor together: they read the same prompts and, with
  // the rollout's seed shared, sample the same answers from the same gathered weights.
  TORCH_CHECK(data_parallel().tensor_parallel_size == 1 || !o_.generation_tensor_parallel, "stage ", stage_,
              ": generation_tensor_parallel / inference_tp_size re-shard the actor of a data-parallel strategy for "
              "rollouts; under strategy 'tp' the actor is split already (leave both unset)");
  Generator* generator = ctx_.generator();
  if (generator == nullptr)
    throw std::invalid_argument(fmt::format(
        "stage {}: ppo generates answers with the stage's generation plugin; add generation = {{ plugin = "
        "\"kv-cache\", max_new_tokens = 256 }} to the stage",
        stage_));
  pad_id_ = rlhf::rollout_pad_id(*tokenizer_);
  const auto& data = ctx_.data();
  const auto& held_out = data.tokenized(Phase::ppo, true, *tokenizer_);
  if (train_.empty()) throw std::invalid_argument(fmt::format("stage {}: the PPO split has no prompts", stage_));
  if (o_.enable_ptx && data.pretraining_texts().empty())
    throw std::invalid_argument(fmt::format(
        "stage {}: enable_ptx = true but the pipeline's [data] has no pretraining texts", stage_));

  // ---- models ----
  actor_ = ctx_.load_model("actor");
  reference_ = ctx_.load_model("reference");
  if (o_.reference_dtype) reference_->to(*o_.reference_dtype);
  critic_ = std::make_shared<RewardModel>(ctx_.load_model("critic"));
  load_value_head(*critic_, ctx_.model_dir("critic"));
  for (auto& p : reference_->parameters()) p.set_requires_grad(false);
  reference_->eval();
  rewards_ = std::make_unique<rlhf::RewardSum>(
      rlhf::stage_rewards(ctx_, o_.reward.empty() ? "" : "reward", o_.reward_dtype, {o_.offload_reward_model}),
      tokenizer_);
  add_lora(*actor_, *handle_.family, o_.actor_lora_dim, o_.actor_lora_module_name, "actor", {});
  add_lora(*critic_, *ctx_.model("critic").family, o_.critic_lora_dim, o_.critic_lora_module_name, "critic",
           {"v_head"});

  // Optimizer steps: DeepSpeed-Chat's num_total_iters (prompt batches x micro-batches per experience x ppo_epochs
  // / accumulation), capped by max_steps.
  const int64_t global_prompt_batches = (static_cast<int64_t>(train_.size()) + o_.generation_batch_size - 1) /
                                        o_.generation_batch_size;
  const int64_t replicas = data_parallel().size;
  const int64_t prompt_batches = (global_prompt_batches + replicas - 1) / replicas;  // this replica's share
  const int64_t micro_per_rollout = (o_.generation_batch_size + o_.training_batch_size - 1) / o_.training_batch_size;
  total_steps_ = o_.epochs * prompt_batches * micro_per_rollout * o_.ppo_epochs / o_.gradient_accumulation_steps;
  total_steps_ = std::max<int64_t>(total_steps_, 1);
  if (o_.max_steps > 0) total_steps_ = std::min(total_steps_, o_.max_steps);
  actor_opt_ = o_.actor_optimizer;
  critic_opt_ = o_.critic_optimizer;
  actor_opt_.total_steps = critic_opt_.total_steps = total_steps_;
  // DeepSpeed-Chat doubles the actor's accumulation with PTX: the PPO and PTX backwards make one step.
  if (o_.enable_ptx) actor_opt_.gradient_accumulation_steps *= 2;
  actor_engine_ = ctx_.strategy().make_engine(actor_, actor_, actor_opt_);
  critic_engine_ = ctx_.strategy().make_engine(critic_, critic_->base, critic_opt_);
  device_ = actor_engine_->device();
  std::cout << fmt::format("stage {}: reference: {}\n", stage_,
                           ctx_.strategy().place_frozen_model(*reference_, device_, {o_.offload_reference_model}));
  rewards_->prepare(ctx_, device_);
  // fp16: an overflow in either model skips both steps, so both backward passes come before either step (the
  // models are apart and the passes run in the same order, so only the skipping differs). Otherwise
  // DeepSpeed-Chat's order, in which the actor's gradients are freed before the critic's pass.
  fp16_pair_ = actor_->dtype() == at::kHalf || critic_->base->dtype() == at::kHalf;

  // ---- rollouts, rewards, evaluation, PTX ----
  sampling_ = rlhf::rollout_sampling(*generator, *tokenizer_, pad_id_);
  rlhf::RolloutOptions rollout;
  rollout.stage = stage_;
  rollout.pad_id = pad_id_;
  rollout.tensor_parallel = o_.generation_tensor_parallel;
  rollout.inference_tp_size = o_.generation_tensor_parallel ? o_.inference_tp_size : 1;
  rlhf::apply_consistency_check(o_.consistency, actor_->dtype(), rollout);
  rollout.debug_corrupt_generation_logprobs = o_.debug_corrupt_generation_logprobs;
  collector_ = std::make_unique<rlhf::RolloutCollector>(rollout, *actor_, *actor_engine_, *handle_.family,
                                                        *generator, comm_);
  rlhf::EvaluatorOptions eval;
  eval.stage = stage_;
  eval.prompts = o_.eval_prompts;
  eval.batch_size = o_.eval_batch_size;
  eval.max_prompt_seq_len = data.limits().max_prompt_seq_len;
  eval.pad_id = pad_id_;
  eval.trim_prompt_padding = o_.trim_prompt_padding;
  evaluator_ = std::make_unique<rlhf::Evaluator>(eval, *collector_, *reference_, *rewards_, tokenizer_, held_out,
                                                 data.examples(Phase::ppo, true));
  if (o_.enable_ptx) ptx_ = rlhf::PtxStream(data.pretraining_texts(), *tokenizer_, data.limits().max_seq_len, pad_id_);

  std::cout << fmt::format(
      "stage {}: {} prompts ({} held out), {} optimizer steps, generation {} x{} prompts, training micro-batch {}, "
      "ppo_epochs {}, pad {}, PTX {}, actor: {}\n",
      stage_, train_.size(), held_out.size(), total_steps_, o_.generation_batches, o_.generation_batch_size,
      o_.training_batch_size, o_.ppo_epochs, pad_id_, o_.enable_ptx ? "on" : "off", actor_engine_->describe());
  for (const auto& hook : ctx_.hooks()) {
    hook->set_model_info({handle_.family, tokenizer_});
    auto whole = actor_engine_->gather_parameters();
    hook->on_train_begin(*actor_);
  }
}

// LoRA as DeepSpeed-Chat's step 3 adds it: on the trained roles only (the reference and reward stay plain).
void PpoTrainer::add_lora(torch::nn::Module& module, const ModelFamily& family, int64_t dim, const std::string& name,
                          const char* role, const std::vector<std::string>& keep) {
  if (dim == 0) return;
  LoraOptions lora;
  lora.rank = dim;
  const size_t n = enable_lora_where(module, name, family.lora_target_modules(), lora);
  if (o_.only_optimize_lora) freeze_all_but_lora(module, keep);
  std::cout << fmt::format("stage {}: {} LoRA rank {} on {} linears{}\n", stage_, role, dim, n,
                           o_.only_optimize_lora ? ", only the adapters trained" : "");
}

// The training path of the trained roles, shared by the experience and the training step (whose first micro-batch
// reuses the experience's): the actor's log-probs of seq[:, start + 1:] ([B, L - 1 - start], LM head on those
// positions only) and the critic's values ([B, L - 1]).
at::Tensor PpoTrainer::actor_answer_logprobs(const at::Tensor& seq, const at::Tensor& mask, int64_t start) {
  auto logits = actor_engine_->forward(seq, mask, {.logits_from = start}).logits;
  return ppo::logprobs_from_logits(logits.slice(1, 0, -1), seq.slice(1, start + 1)).to(at::kFloat);
}

at::Tensor PpoTrainer::critic_values(const at::Tensor& seq, const at::Tensor& mask) {
  auto hidden = critic_engine_->forward(seq, mask, {.return_hidden = true, .return_logits = false}).hidden;
  return critic_->values_from_hidden(hidden).slice(1, 0, -1).to(at::kFloat);
}

void PpoTrainer::evaluate(CausalLM& model, int64_t step, const std::string& prefix) {
  // ZeRO-3: the actor's weights whole for the whole evaluation (every rank evaluates the same prompts).
  auto whole = &model == actor_.get() ? actor_engine_->gather_parameters() : nullptr;
  evaluator_->run(model, sampling_, metrics_, step, prefix);
}

std::optional<Experience> PpoTrainer::generate_experience(const std::vector<int64_t>& indices, bool first_of_flush) {
  PromptBatch batch = rlhf::rollout_prompts(train_, indices, ctx_.data().limits().max_prompt_seq_len, pad_id_,
                                            o_.trim_prompt_padding);
  SamplingOptions options = sampling_;
  options.seed = ctx_.seed() * 1000003ULL + static_cast<uint64_t>(rollout_);
  rlhf::Rollout r = collector_->collect(batch, options, metrics_, actor_engine_->global_step(), rollout_);
  const auto t0 = Clock::now();
  const GenerationResult& out = r.generated;
  const int64_t P = out.prompt_length;
  auto keep = rlhf::rows_to_keep(out.sequences, P, pad_id_);
  const int64_t dropped = out.sequences.size(0) - keep.size(0);
  metrics_.scalar("rollout/dropped_rows", static_cast<double>(dropped), actor_engine_->global_step());
  // Ranks train in lockstep: a rollout that is empty on any rank is skipped (or replaced) on every rank.
  if (comm_.max(keep.size(0) == 0 ? 1.0 : 0.0) > 0.0) {
    // DeepSpeed-Chat reuses the last valid batch when every answer is too short.
    std::cout << fmt::format("stage {}: rollout {}: every answer has <= 1 token; {}\n", stage_, rollout_,
                             last_valid_ ? "reusing the previous rollout" : "skipping it");
    return last_valid_;
  }
  Experience e;
  e.prompt_length = P;
  e.prompts = out.sequences.size(0);
  e.generation_seconds = r.generation_seconds;
  e.consistency_seconds = r.consistency_seconds;
  e.seq = out.sequences.index_select(0, keep);
  e.attention_mask = rlhf::experience_mask(e.seq, pad_id_);
  // DeepSpeed-Chat computes the old log-probs and values in train mode (its scripts set dropout 0), as training
  // does, so the first micro-batch's forwards can serve both.
  actor_engine_->train(true);
  critic_engine_->train(true);
  auto logprobs_of_rows = [&](int64_t r0, int64_t r1) {
    return actor_answer_logprobs(e.seq.slice(0, r0, r1), e.attention_mask.slice(0, r0, r1), P - 1);
  };
  auto values_of_rows = [&](int64_t r0, int64_t r1) {
    return critic_values(e.seq.slice(0, r0, r1), e.attention_mask.slice(0, r0, r1));
  };
  const int64_t B = e.seq.size(0);
  const int64_t recorded = first_of_flush && o_.reuse_experience_forwards ? std::min(B, o_.training_batch_size) : 0;
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
  e.old_logprobs = rlhf::pad_front(with_recorded(e.first_micro_logprobs, logprobs_of_rows), P - 1);
  e.values = with_recorded(e.first_micro_values, values_of_rows);
  e.ref_logprobs = rlhf::frozen_answer_logprobs(*reference_, e.seq, e.attention_mask, P - 1);
  e.score = rewards_
                ->score(e.seq, out.answer_mask.index_select(0, keep), P, pad_id_,
                        rlhf::rollout_examples(ctx_.data().examples(Phase::ppo, false), train_, indices, 1, keep))
                .total;
  e.experience_seconds = seconds_since(t0, device_);
  last_valid_ = e;
  last_valid_->first_micro_logprobs = last_valid_->first_micro_values = at::Tensor();  // a reuse trains afresh
  return e;
}

void PpoTrainer::after_actor_step(const StepResult& r) {
  actor_nonfinite_.skipped(r, actor_engine_->global_step(), "actor");
  if (!r.applied || ctx_.hooks().empty()) return;
  auto whole = actor_engine_->gather_parameters();  // the EMA reads every weight (ZeRO-3: gathered)
  for (const auto& hook : ctx_.hooks()) hook->after_optimizer_step(*actor_, {actor_engine_->global_step()});
}

// PTX: the actor's causal-LM loss on pretraining text, accumulated with its PPO loss (the accumulation is doubled
// for it, so the actor's boundary comes after this backward).
double PpoTrainer::ptx_backward() {
  auto ids = ptx_.next(o_.training_batch_size).to(device_);
  auto mask = at::ones_like(ids);
  auto logits = actor_engine_->forward(ids, mask).logits;
  const int64_t V = logits.size(-1);
  auto loss = at::cross_entropy_loss(logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V}),
                                     ids.slice(1, 1).reshape({-1}));
  actor_engine_->backward(loss * o_.unsup_coef);
  return loss.item<double>();
}

TrainStats PpoTrainer::train_step(std::vector<Experience>& buffer) {
  TrainStats s;
  actor_engine_->train(true);
  critic_engine_->train(true);
  for (int64_t ep = 0; ep < o_.ppo_epochs && !stop_; ++ep) {
    for (auto& e : buffer) {
      const int64_t B = e.seq.size(0), start = e.prompt_length - 1;
      // Every rank takes as many micro-batches as the rank with the most rows (a rank with fewer rows after
      // dropping short answers wraps around), so that the collectives line up.
      const int64_t local_micro = (B + o_.training_batch_size - 1) / o_.training_batch_size;
      const auto micro_batches = static_cast<int64_t>(comm_.max(static_cast<double>(local_micro)));
      for (int64_t k = 0; k < micro_batches && !stop_; ++k) {
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
        actor_engine_->backward(a_loss);
        if (!fp16_pair_) after_actor_step(actor_engine_->step());  // not yet a boundary with PTX
        if (o_.enable_ptx) s.ptx_loss += ptx_backward();
        if (o_.enable_ptx && !fp16_pair_) after_actor_step(actor_engine_->step());
        // critic
        auto values = recorded ? std::exchange(e.first_micro_values, at::Tensor()) : critic_values(seq, mask);
        auto c_loss = ppo::critic_loss(values.slice(1, start), old_values.slice(1, start), returns, m, o_.ppo);
        critic_engine_->backward(c_loss);
        StepOptions together;
        if (fp16_pair_) {
          const bool actor_overflow = actor_engine_->gradients_overflowed();  // both asked: each is collective
          const bool critic_overflow = critic_engine_->gradients_overflowed();
          together.skip = actor_overflow || critic_overflow;
          if (together.skip) ++s.overflow_skips;
          after_actor_step(actor_engine_->step(together));
        }
        critic_nonfinite_.skipped(critic_engine_->step(together), critic_engine_->global_step(), "critic");
        s.actor_loss += a_loss.item<double>();
        s.critic_loss += c_loss.item<double>();
        ++s.micro;
        s.rows += r1 - r0;
        if (o_.max_steps > 0 && actor_engine_->global_step() >= o_.max_steps) stop_ = true;
      }
    }
  }
  return s;
}

// ---- checkpoints: <stage>/checkpoints/step-N/{actor,critic,hook-I}, complete once ppo.json is written ----
void PpoTrainer::save(int64_t epoch, int64_t next_batch) {
  nlohmann::json position = {{"epoch", epoch}, {"next_batch", next_batch}, {"rollout", rollout_},
                             {"ptx_next", ptx_.position()}, {"world_size", comm_.size()}};
  rlhf::save_stage_checkpoint(ctx_.stage_dir(), {{"actor", actor_engine_.get()}, {"critic", critic_engine_.get()}},
                              ctx_.hooks(), position, "ppo.json", comm_);
}

std::optional<std::pair<int64_t, int64_t>> PpoTrainer::restore() {
  auto restored = rlhf::restore_stage_checkpoint(
      ctx_.stage_dir(), {{"actor", actor_engine_.get()}, {"critic", critic_engine_.get()}}, ctx_.hooks(), "ppo.json");
  if (!restored) return std::nullopt;
  const auto& position = restored->position;
  const int64_t epoch = position.at("epoch").get<int64_t>(), batch = position.at("next_batch").get<int64_t>();
  rollout_ = position.at("rollout").get<int64_t>();
  ptx_.set_position(position.at("ptx_next").get<size_t>());
  std::cout << fmt::format("stage {}: resuming from {} (step {}, epoch {}, prompt batch {})\n", stage_,
                           restored->dir.string(), actor_engine_->global_step(), epoch, batch);
  return std::pair{epoch, batch};
}

// Trains on the buffered rollouts and logs the means over every rank's rollouts.
void PpoTrainer::flush(std::vector<Experience>& buffer) {
  if (buffer.empty()) return;
  double gen_s = 0, check_s = 0, exp_s = 0, gen_flops = 0, rollout_rows = 0, reward_sum = 0, kl_sum = 0;
  const auto& dims = actor_->dims();
  const auto& cdims = critic_->base->dims();
  for (const auto& e : buffer) {
    at::NoGradGuard no_grad;
    const int64_t P = e.prompt_length;
    auto action = e.attention_mask.slice(1, P).to(at::kFloat);
    kl_sum += ((e.old_logprobs.slice(1, P - 1) - e.ref_logprobs.slice(1, P - 1)) * action).sum().item<double>();
    reward_sum += e.score.sum().item<double>();
    gen_s += e.generation_seconds;
    check_s += e.consistency_seconds;
    exp_s += e.experience_seconds;
    rollout_rows += static_cast<double>(e.seq.size(0));
    // Generation as DeepSpeed-Chat counts it: forward-only (k = 1) over the whole sequence.
    gen_flops += megatron_flops(1.0, static_cast<double>(e.prompts), static_cast<double>(e.seq.size(1)), dims);
  }
  // Each replica's rollouts once (the ranks of a tensor-parallel replica hold the same ones).
  const double copies = data_parallel().tensor_parallel_size;
  reward_sum = comm_.sum(reward_sum) / copies;
  kl_sum = comm_.sum(kl_sum) / copies;
  rollout_rows = comm_.sum(rollout_rows) / copies;
  auto t0 = Clock::now();
  TrainStats s = train_step(buffer);
  const double train_s = seconds_since(t0, device_);
  const int64_t step = actor_engine_->global_step();
  const double k_actor = actor_opt_.gradient_checkpointing ? 4.0 : 3.0;
  const double k_critic = critic_opt_.gradient_checkpointing ? 4.0 : 3.0;
  double train_flops = 0;
  for (const auto& e : buffer) {
    const double B = static_cast<double>(e.seq.size(0)) * o_.ppo_epochs, L = static_cast<double>(e.seq.size(1));
    train_flops += megatron_flops(k_actor, B, L, dims) + megatron_flops(k_critic, B, L, cdims);
  }
  const double n = static_cast<double>(std::max<int64_t>(s.micro, 1));
  metrics_.scalar("reward/mean", reward_sum / rollout_rows, step);
  metrics_.scalar("kl/mean", kl_sum / rollout_rows, step);
  metrics_.scalar("actor/loss", s.actor_loss / n, step);
  metrics_.scalar("critic/loss", s.critic_loss / n, step);
  if (o_.enable_ptx) metrics_.scalar("ptx/loss", s.ptx_loss / n, step);
  if (fp16_pair_) metrics_.scalar("train/overflow_skipped_steps", static_cast<double>(s.overflow_skips), step);
  metrics_.scalar("actor/lr", actor_engine_->lr(), step);
  metrics_.scalar("time/generation_s", gen_s, step);
  metrics_.scalar("time/experience_s", exp_s, step);
  metrics_.scalar("time/training_s", train_s, step);
  metrics_.scalar("samples_per_s", rollout_rows / (gen_s + check_s + exp_s + train_s), step);
  metrics_.scalar("tflops_generation", gen_flops / gen_s / 1e12, step);
  metrics_.scalar("tflops_training", train_flops / train_s / 1e12, step);
  if (device_.is_cuda()) metrics_.scalar("memory/peak_gpu_bytes", static_cast<double>(peak_device_memory(device_)), step);
  ctx_.progress().update(step,
                         {{"reward", reward_sum / rollout_rows},
                          {"kl", kl_sum / rollout_rows},
                          {"actor_loss", s.actor_loss / n},
                          {"critic_loss", s.critic_loss / n}},
                         static_cast<int64_t>(rollout_rows));
  buffer.clear();
}

void PpoTrainer::run() {
  int64_t start_epoch = 0, start_batch = 0;
  if (auto position = restore()) {
    std::tie(start_epoch, start_batch) = *position;
    metrics_.truncate_after(actor_engine_->global_step());  // drop what the interrupted attempt logged after it
  } else {
    metrics_.truncate_after(-1);
    evaluate(*actor_, 0, "eval/");
  }
  ctx_.progress().start(stage_, total_steps_);
  const fs::path checkpoints = ctx_.stage_dir() / "checkpoints";
  std::vector<Experience> buffer;
  for (int64_t epoch = start_epoch; epoch < o_.epochs && !stop_; ++epoch) {
    const auto replica = data_parallel();
    const auto batches = rank_batches(
        epoch_batches(static_cast<int64_t>(train_.size()), o_.generation_batch_size, ctx_.seed(), epoch),
        replica.rank, replica.size);
    for (size_t b = epoch == start_epoch ? static_cast<size_t>(start_batch) : 0; b < batches.size(); ++b) {
      if (stop_) break;
      auto e = generate_experience(batches[b], buffer.empty());
      ++rollout_;
      if (!e) continue;
      buffer.push_back(std::move(*e));
      if (static_cast<int64_t>(buffer.size()) == o_.generation_batches) {
        flush(buffer);
        const bool epoch_end = b + 1 == batches.size();
        auto save_here = [&] { save(epoch_end ? epoch + 1 : epoch, epoch_end ? 0 : static_cast<int64_t>(b) + 1); };
        const bool periodic = o_.checkpoint_interval > 0 && rollout_ % o_.checkpoint_interval == 0;
        if (periodic) save_here();
        if (const int sig = stop_signal_everywhere()) {  // after a training flush: nothing buffered is lost
          if (!periodic) save_here();
          ctx_.progress().finish();
          metrics_.flush();
          throw StopRequested(sig, fmt::format("stopped by {} after rollout {} (step {}); checkpoint {}",
                                               signal_name(sig), rollout_, actor_engine_->global_step(),
                                               (checkpoints / fmt::format("step-{}", actor_engine_->global_step())).string()));
        }
      }
      if (o_.eval_interval > 0 && rollout_ % o_.eval_interval == 0)
        evaluate(*actor_, actor_engine_->global_step(), "eval/");
    }
  }
  flush(buffer);
  ctx_.progress().finish();
  finish();
}

// The final evaluations (actor, EMA) and outputs: final/ (actor), the hooks' (ema/), critic/.
void PpoTrainer::finish() {
  const int64_t final_step = actor_engine_->global_step();
  evaluate(*actor_, final_step, "eval/");
  rlhf::finish_actor_stage(
      ctx_, *actor_, *actor_engine_, handle_, *tokenizer_,
      [&](CausalLM& ema) { evaluate(ema, final_step, "eval/ema_"); }, comm_);
  auto critic_whole = critic_engine_->gather_parameters();
  if (!comm_.is_main()) return;
  if (o_.save_critic) {
    nlohmann::json conventions = {{"pad_token_id", pad_id_}};
    std::ifstream in(ctx_.model_dir("critic") / "reward_model.json");
    if (in) conventions = nlohmann::json::parse(in);
    save_reward_model(*critic_, *ctx_.model("critic").family, ctx_.tokenizer("critic").get(),
                      ctx_.stage_dir() / "critic", conventions);
  }
}

class Ppo : public Algorithm {
 public:
  explicit Ppo(const ConfigTable& table) : o_(read_options(table)) {}

  DataNeeds data_needs() const override { return {Phase::ppo, false}; }
  std::map<std::string, std::string> model_roles() const override {
    std::map<std::string, std::string> roles = {
        {"actor", o_.actor}, {"critic", o_.critic}, {"reference", o_.reference}};
    if (!o_.reward.empty()) roles["reward"] = o_.reward;
    return roles;
  }
  MemoryNeeds memory_needs(const MemoryNeedsContext& c) const override;
  void run(StageContext& context) override { PpoTrainer(o_, context).run(); }

 private:
  PpoOptions o_;
};

// Rollouts of max_prompt_seq_len + max_new_tokens (left-padded prompts, answers up to the generator's limit).
// With reuse_experience_forwards the first micro-batch's actor and critic graphs live from the experience phase
// until the training step's backward; without it the actor's training graph is freed before the critic's is made.
MemoryNeeds Ppo::memory_needs(const MemoryNeedsContext& c) const {
  MemoryNeeds needs;
  ModelUse actor{"actor", "", true};
  actor.lora_dim = o_.actor_lora_dim;
  actor.only_optimize_lora = o_.only_optimize_lora;
  actor.gradient_checkpointing = o_.actor_optimizer.gradient_checkpointing;
  ModelUse critic{"critic", "", true, /*value_head=*/true};
  critic.lora_dim = o_.critic_lora_dim;
  critic.only_optimize_lora = o_.only_optimize_lora;
  critic.gradient_checkpointing = o_.critic_optimizer.gradient_checkpointing;
  ModelUse reference{"reference", "", false};
  reference.dtype = o_.reference_dtype;
  ModelUse reward{"reward", "", false, /*value_head=*/true};
  reward.dtype = o_.reward_dtype;
  needs.models = {actor, critic, reference};
  if (!o_.reward.empty()) needs.models.push_back(reward);

  const int64_t G = o_.generation_batch_size, B = o_.training_batch_size;
  const int64_t answer = c.max_new_tokens, length = c.max_prompt_seq_len + answer;
  const ForwardLoad actor_graph{"actor", B, length, answer, true}, critic_graph{"critic", B, length, 0, true};
  needs.phases.push_back({"rollout", {{"actor", G, c.max_prompt_seq_len, 1, false}}, {{"actor", G, length}}});
  PhaseLoad experience{"experience", {{"reference", G, length, answer, false}}, {}};
  if (o_.reuse_experience_forwards) experience.forwards.insert(experience.forwards.begin(), {actor_graph, critic_graph});
  needs.phases.push_back(experience);
  PhaseLoad training{"training", {actor_graph}, {}};
  if (o_.reuse_experience_forwards) training.forwards.push_back(critic_graph);
  needs.phases.push_back(training);
  if (o_.enable_ptx) needs.phases.push_back({"ptx", {{"actor", B, c.max_seq_len, c.max_seq_len, true}}, {}});
  return needs;
}

}  // namespace

DSCHAT_PLUGIN("ppo", "0.1.0", "DeepSpeed-Chat step 3: PPO with a reward model (hybrid engine, EMA, PTX)") {
  registrar.add<dschat::Algorithm>("ppo", "PPO: actor + critic trained on the reward model's scores",
                                   [](const dschat::ConfigTable& options) { return std::make_shared<Ppo>(options); });
}
