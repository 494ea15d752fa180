#include "dschat/sdk/rlhf/group_trainer.h"

#include <ATen/ops/cat.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/config.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/interrupt.h"
#include "dschat/sdk/loss_scale.h"
#include "dschat/sdk/metrics.h"
#include "dschat/sdk/ppo_math.h"
#include "dschat/sdk/rlhf/evaluator.h"
#include "dschat/sdk/rlhf/rewards.h"
#include "dschat/sdk/rlhf/rollout.h"
#include "dschat/sdk/rlhf/stage_checkpoint.h"
#include "dschat/sdk/rlhf/stage_outputs.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"

namespace dschat::rlhf {

namespace fs = std::filesystem;

GroupTrainerOptions read_group_trainer_options(const ConfigTable& t, const std::string& algorithm,
                                               const GroupTrainerDefaults& defaults) {
  GroupTrainerOptions o;
  o.algorithm = algorithm;
  if (!t.has("generation"))  // found by validate, not after earlier stages have trained
    t.fail_here(fmt::format("the {} stage samples its answers: add generation = {{ plugin = \"kv-cache\", "
                            "max_new_tokens = 128, do_sample = true }}",
                            algorithm));
  if (!t.has("rewards") && !t.has("reward"))
    t.fail_here(fmt::format("the {} stage needs something to score its answers: rewards = [{{ plugin = "
                            "\"exact-answer\" }}, ...] or reward = \"<reward model stage>\"",
                            algorithm));
  o.actor = t.get_string("actor");
  o.reference = t.get_string("reference", o.actor);
  if (t.has("rewards") && t.has("reward"))
    t.fail("reward", "the stage lists rewards, which replace the reward model: add it to the list instead, "
                     "rewards = [{ plugin = \"reward-model\", model = \"<model>\" }, ...]");
  o.reward = t.get_string("reward", "");
  o.num_samples = t.get_int("num_samples", 4);
  if (o.num_samples < 2)
    t.fail("num_samples", fmt::format("{} compares each answer with the other answers to its prompt: it needs at "
                                      "least 2 samples per prompt, got {}",
                                      algorithm, o.num_samples));
  o.prompts_per_rollout = t.get_int("per_device_generation_batch_size", 8, 1);
  o.training_batch_size = t.get_int("per_device_training_batch_size", 16, 1);
  o.ppo_epochs = t.get_int("ppo_epochs", 1, 1);
  o.epochs = t.get_int("epochs", 1, 1);
  o.max_steps = t.get_int("max_steps", 0, 0);
  o.optimizer.learning_rate = t.get_float("learning_rate", 1e-6, 0.0);
  o.optimizer.weight_decay = t.get_float("weight_decay", 0.0, 0.0);
  o.optimizer.lr_scheduler = t.get_choice("lr_scheduler", {"cosine", "linear", "constant"}, "constant");
  o.optimizer.num_warmup_steps = t.get_int("num_warmup_steps", 0, 0);
  o.optimizer.max_grad_norm = t.get_float("max_grad_norm", 1.0, 0.0);
  o.optimizer.gradient_accumulation_steps = t.get_int("gradient_accumulation_steps", 1, 1);
  o.optimizer.gradient_checkpointing = t.get_bool("gradient_checkpointing", false);
  read_loss_scale_options(t, o.optimizer);
  o.loss.clip_low = t.get_float("cliprange", 0.2, 0.0);
  o.loss.clip_high = t.get_float("cliprange_high", o.loss.clip_low, 0.0);
  o.loss.kl_coef = t.get_float("beta", 0.04, 0.0);
  const std::string aggregation =
      t.get_choice("loss_aggregation", {"token-mean", "seq-mean", "seq-mean-token-sum"}, defaults.loss_aggregation);
  o.loss.aggregation = pg::loss_aggregation_from_string(aggregation);
  if (defaults.reads_std_normalize) o.std_normalize = t.get_bool("std_normalize", true);
  o.eval_interval = t.get_int("eval_interval", 0, 0);
  o.eval_prompts = t.get_int("eval_prompts", 0, 0);
  o.eval_batch_size = t.get_int("per_device_eval_batch_size", 16, 1);
  o.trim_prompt_padding = t.get_bool("trim_prompt_padding", true);
  o.checkpoint_interval = t.get_int("checkpoint_interval", 0, 0);
  o.max_nonfinite_steps = t.get_int("max_nonfinite_steps", 3, 1);
  o.consistency = read_consistency_check(t);
  return o;
}

std::map<std::string, std::string> group_trainer_roles(const GroupTrainerOptions& o) {
  std::map<std::string, std::string> roles{{"actor", o.actor}, {"reference", o.reference}};
  if (!o.reward.empty()) roles["reward"] = o.reward;
  return roles;
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t, at::Device device) {
  synchronize(device);
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// One rollout: G answers per prompt in consecutive rows, as generated (token-in / token-out).
struct GroupExperience {
  GenerationResult generated;
  at::Tensor old_logprobs, ref_logprobs;  // [B, T] over the answer tokens (undefined: not needed)
  at::Tensor advantages, rewards;         // [B]
  std::vector<std::pair<std::string, double>> reward_parts;  // each reward's mean
  double generation_seconds = 0.0, consistency_seconds = 0.0, experience_seconds = 0.0, zero_signal_groups = 0.0;
};

struct StepStats {
  double loss = 0, clip_fraction = 0, kl = 0;
  int64_t micro = 0;
};

class GroupTrainer {
 public:
  GroupTrainer(const GroupTrainerOptions& options, StageContext& context, const AdvantageEstimator& advantages);
  void run();

 private:
  GroupExperience generate_experience(const std::vector<int64_t>& indices);
  StepStats train_step(GroupExperience& e);
  void log(const GroupExperience& e, const StepStats& s, double train_s);
  void evaluate(CausalLM& model, int64_t step, const std::string& prefix);
  void save(int64_t epoch, int64_t next_batch);
  std::optional<std::pair<int64_t, int64_t>> restore();
  // Log-probs of the answer tokens [b, T] on the training path (LM head from the last prompt position on).
  at::Tensor answer_logprobs(const GenerationResult& g, int64_t r0, int64_t r1);

  const GroupTrainerOptions& o_;
  StageContext& ctx_;
  const AdvantageEstimator& estimate_;
  const std::string stage_;
  Communicator& comm_;
  MetricsSink& metrics_;
  ModelHandle handle_;
  std::shared_ptr<Tokenizer> tokenizer_;
  int64_t pad_id_ = 0;
  const std::vector<TokenizedExample>& train_;
  std::shared_ptr<CausalLM> actor_, reference_;
  std::unique_ptr<Engine> engine_;
  at::Device device_{at::kCPU};
  int64_t total_steps_ = 1;
  SamplingOptions sampling_;
  std::unique_ptr<RolloutCollector> collector_;
  std::unique_ptr<RewardSum> rewards_;
  std::unique_ptr<Evaluator> evaluator_;
  NonFiniteGuard nonfinite_;
  int64_t rollout_ = 0;
  bool stop_ = false;
};

GroupTrainer::GroupTrainer(const GroupTrainerOptions& options, StageContext& context,
                           const AdvantageEstimator& advantages)
    : o_(options), ctx_(context), estimate_(advantages), stage_(context.stage_name()), comm_(world()),
      metrics_(context.metrics()), handle_(context.model("actor")), tokenizer_(context.tokenizer("actor")),
      train_(context.data().tokenized(Phase::ppo, false, *tokenizer_)),
      nonfinite_(context.stage_name(), options.max_nonfinite_steps) {
  Generator* generator = ctx_.generator();
  if (generator == nullptr)
    throw std::invalid_argument(fmt::format("stage {}: {} samples answers with the stage's generation plugin; add "
                                            "generation = {{ plugin = \"kv-cache\", do_sample = true }}",
                                            stage_, o_.algorithm));
  pad_id_ = rollout_pad_id(*tokenizer_);
  const auto& data = ctx_.data();
  if (train_.empty()) throw std::invalid_argument(fmt::format("stage {}: the PPO split has no prompts", stage_));

  actor_ = ctx_.load_model("actor");
  reference_ = ctx_.load_model("reference");
  for (auto& p : reference_->parameters()) p.set_requires_grad(false);
  reference_->eval();
  rewards_ = std::make_unique<RewardSum>(stage_rewards(ctx_, o_.reward.empty() ? "" : "reward"), tokenizer_);

  // Optimizer steps: this rank's micro-batches over an epoch's rollouts (the last prompt batch may be short)
  // x epochs x ppo_epochs / accumulation. Every epoch cuts the prompts into batches of the same sizes.
  int64_t micro_per_epoch = 0;
  for (const auto& batch : rank_batches(epoch_batches(static_cast<int64_t>(train_.size()), o_.prompts_per_rollout,
                                                      ctx_.seed(), 0),
                                        data_parallel().rank, data_parallel().size)) {
    const int64_t rows = static_cast<int64_t>(batch.size()) * o_.num_samples;
    micro_per_epoch += (rows + o_.training_batch_size - 1) / o_.training_batch_size;
  }
  total_steps_ = std::max<int64_t>(
      1, o_.epochs * micro_per_epoch * o_.ppo_epochs / o_.optimizer.gradient_accumulation_steps);
  if (o_.max_steps > 0) total_steps_ = std::min(total_steps_, o_.max_steps);
  OptimizerOptions opt = o_.optimizer;
  opt.total_steps = total_steps_;
  engine_ = ctx_.strategy().make_engine(actor_, actor_, opt);
  device_ = engine_->device();
  std::cout << fmt::format("stage {}: reference: {}\n", stage_,
                           ctx_.strategy().place_frozen_model(*reference_, device_, {}));
  rewards_->prepare(ctx_, device_);

  sampling_ = rollout_sampling(*generator, *tokenizer_, pad_id_);
  RolloutOptions ro;
  ro.stage = stage_;
  ro.pad_id = pad_id_;
  apply_consistency_check(o_.consistency, actor_->dtype(), ro);
  collector_ = std::make_unique<RolloutCollector>(ro, *actor_, *engine_, *handle_.family, *generator, comm_);
  EvaluatorOptions eo;
  eo.stage = stage_;
  eo.prompts = o_.eval_prompts;
  eo.batch_size = o_.eval_batch_size;
  eo.max_prompt_seq_len = data.limits().max_prompt_seq_len;
  eo.pad_id = pad_id_;
  eo.trim_prompt_padding = o_.trim_prompt_padding;
  evaluator_ = std::make_unique<Evaluator>(eo, *collector_, *reference_, *rewards_, tokenizer_,
                                           data.tokenized(Phase::ppo, true, *tokenizer_),
                                           data.examples(Phase::ppo, true));
  std::string names;
  for (const auto& r : rewards_->rewards()) names += fmt::format("{}{} x{}", names.empty() ? "" : " + ", r.name, r.weight);
  std::cout << fmt::format("stage {}: {} prompts x {} samples, {} optimizer steps, training micro-batch {}, "
                           "ppo_epochs {}, beta {}, rewards {}, actor: {}\n",
                           stage_, train_.size(), o_.num_samples, total_steps_, o_.training_batch_size, o_.ppo_epochs,
                           o_.loss.kl_coef, names, engine_->describe());
  for (const auto& hook : ctx_.hooks()) {
    hook->set_model_info({handle_.family, tokenizer_});
    auto whole = engine_->gather_parameters();
    hook->on_train_begin(*actor_);
  }
}

at::Tensor GroupTrainer::answer_logprobs(const GenerationResult& g, int64_t r0, int64_t r1) {
  const int64_t P = g.prompt_length;
  auto seq = g.sequences.slice(0, r0, r1), mask = g.attention_mask.slice(0, r0, r1);
  auto logits = engine_->forward(seq, mask, {.logits_from = P - 1}).logits;
  return ppo::logprobs_from_logits(logits.slice(1, 0, -1), seq.slice(1, P)).to(at::kFloat);
}

GroupExperience GroupTrainer::generate_experience(const std::vector<int64_t>& indices) {
  PromptBatch batch = rollout_prompts(train_, indices, ctx_.data().limits().max_prompt_seq_len, pad_id_,
                                      o_.trim_prompt_padding, o_.num_samples);
  SamplingOptions options = sampling_;
  options.seed = ctx_.seed() * 1000003ULL + static_cast<uint64_t>(rollout_);
  Rollout r = collector_->collect(batch, options, metrics_, engine_->global_step(), rollout_);
  const auto t0 = Clock::now();
  GroupExperience e;
  e.generated = std::move(r.generated);
  e.generation_seconds = r.generation_seconds;
  e.consistency_seconds = r.consistency_seconds;
  const auto& g = e.generated;
  at::NoGradGuard no_grad;
  auto scores = rewards_->score(g.sequences, g.answer_mask, g.prompt_length, pad_id_,
                                rollout_examples(ctx_.data().examples(Phase::ppo, false), train_, indices,
                                                 o_.num_samples));
  e.rewards = scores.total;
  for (const auto& [name, s] : scores.parts) e.reward_parts.emplace_back(name, s.mean().item<double>());
  e.advantages = estimate_(e.rewards, o_.num_samples).to(device_);
  e.zero_signal_groups =
      (e.rewards.view({-1, o_.num_samples}).std(1, /*unbiased=*/false) == 0).to(at::kFloat).mean().item<double>();
  // Old log-probs (the sampling policy on the training path): needed only when a step comes before a row is
  // trained on; otherwise each micro-batch's own log-probs, detached, are the old ones (ratio exactly 1).
  const int64_t B = g.sequences.size(0);
  const bool steps_before_last_row = o_.ppo_epochs > 1 || B > o_.training_batch_size;
  if (steps_before_last_row) {
    engine_->train(true);
    std::vector<at::Tensor> parts;
    for (int64_t r0 = 0; r0 < B; r0 += o_.training_batch_size)
      parts.push_back(answer_logprobs(g, r0, std::min(B, r0 + o_.training_batch_size)));
    e.old_logprobs = at::cat(parts, 0);
  }
  if (o_.loss.kl_coef > 0.0) {
    const int64_t P = g.prompt_length;
    e.ref_logprobs = frozen_answer_logprobs(*reference_, g.sequences, g.attention_mask, P - 1).slice(1, P - 1);
  }
  e.experience_seconds = seconds_since(t0, device_);
  return e;
}

StepStats GroupTrainer::train_step(GroupExperience& e) {
  StepStats s;
  engine_->train(true);
  const auto& g = e.generated;
  const int64_t B = g.sequences.size(0);
  // Every rank takes as many micro-batches as the rank with the most, so that the collectives line up.
  const int64_t local_micro = (B + o_.training_batch_size - 1) / o_.training_batch_size;
  const auto micro_batches = static_cast<int64_t>(comm_.max(static_cast<double>(local_micro)));
  pg::PolicyLossOptions loss_options = o_.loss;
  loss_options.token_budget = std::max<int64_t>(1, g.answer_mask.size(1));
  for (int64_t ep = 0; ep < o_.ppo_epochs && !stop_; ++ep) {
    for (int64_t k = 0; k < micro_batches && !stop_; ++k) {
      const int64_t r0 = (k % local_micro) * o_.training_batch_size, r1 = std::min(B, r0 + o_.training_batch_size);
      auto logp = answer_logprobs(g, r0, r1);
      auto old = e.old_logprobs.defined() ? e.old_logprobs.slice(0, r0, r1) : logp.detach();
      auto ref = e.ref_logprobs.defined() ? e.ref_logprobs.slice(0, r0, r1) : at::Tensor();
      auto mask = g.answer_mask.slice(0, r0, r1).to(at::kFloat);
      auto out = pg::policy_loss(logp, old, ref, e.advantages.slice(0, r0, r1), mask, loss_options);
      engine_->backward(out.loss);
      const StepResult step = engine_->step();
      nonfinite_.skipped(step, engine_->global_step(), "actor");
      if (step.applied && !ctx_.hooks().empty()) {
        auto whole = engine_->gather_parameters();  // the EMA reads every weight (ZeRO-3: gathered)
        for (const auto& hook : ctx_.hooks()) hook->after_optimizer_step(*actor_, {engine_->global_step()});
      }
      s.loss += out.loss.item<double>();
      s.clip_fraction += out.clip_fraction;
      s.kl += out.kl;
      ++s.micro;
      if (o_.max_steps > 0 && engine_->global_step() >= o_.max_steps) stop_ = true;
    }
  }
  return s;
}

// Means over every rank's rollout.
void GroupTrainer::log(const GroupExperience& e, const StepStats& s, double train_s) {
  const int64_t step = engine_->global_step();
  const double rows = comm_.sum(static_cast<double>(e.rewards.size(0)));
  const double reward = comm_.sum(e.rewards.sum().item<double>()) / rows;
  const double len = comm_.sum(e.generated.answer_mask.sum().item<double>()) / rows;
  const double n = static_cast<double>(std::max<int64_t>(s.micro, 1));
  const double ranks = static_cast<double>(comm_.size());
  metrics_.scalar("reward/mean", reward, step);
  if (e.reward_parts.size() > 1)
    for (const auto& [name, mean] : e.reward_parts) metrics_.scalar("reward/" + name, comm_.sum(mean) / ranks, step);
  metrics_.scalar("rollout/answer_len", len, step);
  metrics_.scalar("rollout/zero_signal_groups", comm_.sum(e.zero_signal_groups) / ranks, step);
  metrics_.scalar("actor/loss", s.loss / n, step);
  metrics_.scalar("actor/clip_fraction", s.clip_fraction / n, step);
  metrics_.scalar("kl/mean", s.kl / n, step);
  metrics_.scalar("actor/lr", engine_->lr(), step);
  metrics_.scalar("time/generation_s", e.generation_seconds, step);
  metrics_.scalar("time/experience_s", e.experience_seconds, step);
  metrics_.scalar("time/training_s", train_s, step);
  const double iteration_s = e.generation_seconds + e.consistency_seconds + e.experience_seconds + train_s;
  metrics_.scalar("samples_per_s", rows / iteration_s, step);
  if (device_.is_cuda()) metrics_.scalar("memory/peak_gpu_bytes", static_cast<double>(peak_device_memory(device_)), step);
  ctx_.progress().update(step, {{"reward", reward}, {"loss", s.loss / n}, {"kl", s.kl / n}, {"answer_len", len}},
                         static_cast<int64_t>(rows));
}

void GroupTrainer::evaluate(CausalLM& model, int64_t step, const std::string& prefix) {
  auto whole = &model == actor_.get() ? engine_->gather_parameters() : nullptr;
  evaluator_->run(model, sampling_, metrics_, step, prefix);
}

void GroupTrainer::save(int64_t epoch, int64_t next_batch) {
  nlohmann::json position = {{"epoch", epoch}, {"next_batch", next_batch}, {"rollout", rollout_},
                             {"world_size", comm_.size()}};
  save_stage_checkpoint(ctx_.stage_dir(), {{"actor", engine_.get()}}, ctx_.hooks(), position, o_.algorithm + ".json",
                        comm_);
}

std::optional<std::pair<int64_t, int64_t>> GroupTrainer::restore() {
  auto restored = restore_stage_checkpoint(ctx_.stage_dir(), {{"actor", engine_.get()}}, ctx_.hooks(),
                                           o_.algorithm + ".json");
  if (!restored) return std::nullopt;
  const auto& p = restored->position;
  rollout_ = p.at("rollout").get<int64_t>();
  std::cout << fmt::format("stage {}: resuming from {} (step {})\n", stage_, restored->dir.string(),
                           engine_->global_step());
  return std::pair{p.at("epoch").get<int64_t>(), p.at("next_batch").get<int64_t>()};
}

void GroupTrainer::run() {
  int64_t start_epoch = 0, start_batch = 0;
  if (auto position = restore()) {
    std::tie(start_epoch, start_batch) = *position;
    metrics_.truncate_after(engine_->global_step());
  } else {
    metrics_.truncate_after(-1);
    evaluate(*actor_, 0, "eval/");
  }
  ctx_.progress().start(stage_, total_steps_);
  for (int64_t epoch = start_epoch; epoch < o_.epochs && !stop_; ++epoch) {
    // By replica: under the tp strategy a replica's ranks read the same prompts and, with the rollout's seed
    // shared, sample the same answers from the same gathered actor.
    const auto batches = rank_batches(
        epoch_batches(static_cast<int64_t>(train_.size()), o_.prompts_per_rollout, ctx_.seed(), epoch),
        data_parallel().rank, data_parallel().size);
    for (size_t b = epoch == start_epoch ? static_cast<size_t>(start_batch) : 0; b < batches.size() && !stop_; ++b) {
      GroupExperience e = generate_experience(batches[b]);
      ++rollout_;
      const auto t0 = Clock::now();
      StepStats s = train_step(e);
      log(e, s, seconds_since(t0, device_));
      const bool epoch_end = b + 1 == batches.size();
      auto save_here = [&] { save(epoch_end ? epoch + 1 : epoch, epoch_end ? 0 : static_cast<int64_t>(b) + 1); };
      const bool periodic = o_.checkpoint_interval > 0 && rollout_ % o_.checkpoint_interval == 0;
      if (periodic) save_here();
      if (const int sig = stop_signal_everywhere()) {
        if (!periodic) save_here();
        ctx_.progress().finish();
        metrics_.flush();
        throw StopRequested(sig, fmt::format("stopped by {} after rollout {} (step {})", signal_name(sig), rollout_,
                                             engine_->global_step()));
      }
      if (o_.eval_interval > 0 && rollout_ % o_.eval_interval == 0) evaluate(*actor_, engine_->global_step(), "eval/");
    }
  }
  ctx_.progress().finish();
  const int64_t final_step = engine_->global_step();
  evaluate(*actor_, final_step, "eval/");
  finish_actor_stage(
      ctx_, *actor_, *engine_, handle_, *tokenizer_,
      [&](CausalLM& ema) { evaluate(ema, final_step, "eval/ema_"); }, comm_);
}

}  // namespace

void run_group_trainer(const GroupTrainerOptions& options, StageContext& context,
                       const AdvantageEstimator& advantages) {
  GroupTrainer(options, context, advantages).run();
}

}  // namespace dschat::rlhf
