#include "dschat/sdk/train_loop.h"

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/interrupt.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/tokenizer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <random>

#include <fmt/format.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <nlohmann/json.hpp>

namespace dschat {

namespace fs = std::filesystem;

std::vector<std::vector<int64_t>> epoch_batches(int64_t count, int64_t batch_size, uint64_t seed, int64_t epoch) {
  TORCH_CHECK(batch_size > 0, "batch size must be positive");
  std::vector<int64_t> order(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) order[i] = i;
  std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(epoch));
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::vector<int64_t>> batches;
  for (int64_t start = 0; start < count; start += batch_size)
    batches.emplace_back(order.begin() + start, order.begin() + std::min(count, start + batch_size));
  return batches;
}

std::vector<std::vector<int64_t>> rank_batches(std::vector<std::vector<int64_t>> batches, int rank, int world_size) {
  if (world_size == 1 || batches.empty()) return batches;
  const size_t count = batches.size(), per_rank = (count + world_size - 1) / world_size;
  std::vector<std::vector<int64_t>> mine;
  for (size_t j = 0; j < per_rank; ++j) mine.push_back(batches[(j * world_size + rank) % count]);
  return mine;
}

int64_t total_optimizer_steps(const TrainOptions& options, int64_t num_examples) {
  const int64_t replicas = data_parallel().size;  // each reading its own batches
  const int64_t global_batches =
      (num_examples + options.per_device_train_batch_size - 1) / options.per_device_train_batch_size;
  const int64_t batches = (global_batches + replicas - 1) / replicas;  // this rank's share
  const int64_t accum = options.optimizer.gradient_accumulation_steps;
  int64_t total = options.epochs * ((batches + accum - 1) / accum);
  if (options.max_steps > 0) total = std::min(total, options.max_steps);
  return total;
}

std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& stage_dir, const std::string& marker) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(stage_dir / "checkpoints", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step-", 0) != 0 || name.find('.') != std::string::npos) continue;  // skip *.tmp*, *.old*
    if (!fs::exists(entry.path() / marker)) continue;
    try {
      found.emplace_back(std::stoll(name.substr(5)), entry.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::optional<fs::path> latest_checkpoint(const fs::path& stage_dir, const std::string& marker) {
  auto found = complete_checkpoints(stage_dir, marker);
  if (found.empty()) return std::nullopt;
  return found.back().second;
}

void prune_checkpoints(const fs::path& stage_dir, size_t keep, const std::string& marker) {
  auto found = complete_checkpoints(stage_dir, marker);
  for (size_t i = 0; i + keep < found.size(); ++i) fs::remove_all(found[i].second);
}

int64_t trim_right_padding(at::Tensor& attention_mask, std::vector<at::Tensor*> others) {
  const int64_t longest = attention_mask.sum(1).max().item<int64_t>();
  const int64_t keep = std::max<int64_t>(longest, 1);
  if (keep < attention_mask.size(1)) {
    attention_mask = attention_mask.slice(1, 0, keep).contiguous();
    for (auto* t : others) *t = t->slice(1, 0, keep).contiguous();
  }
  return keep;
}

void report_memory(StageContext& context, const Engine& engine, const std::string& label) {
  auto& comm = world();
  const MemoryFootprint m = engine.memory();
  auto mib = [](int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); };
  std::cout << fmt::format("stage {}{}: rank {} holds {}: parameters {:.2f} MiB, gradients {:.2f} MiB, optimizer "
                           "{:.2f} MiB ({} + {} + {} bytes)\n",
                           context.stage_name(), label.empty() ? "" : " " + label, comm.rank(), engine.describe(),
                           mib(m.parameter_bytes), mib(m.gradient_bytes), mib(m.optimizer_bytes), m.parameter_bytes,
                           m.gradient_bytes, m.optimizer_bytes);
  at::Tensor mine = at::tensor({static_cast<double>(m.parameter_bytes), static_cast<double>(m.gradient_bytes),
                                static_cast<double>(m.optimizer_bytes)}, at::kDouble);
  at::Tensor all = at::empty({3 * comm.size()}, mine.options());
  comm.all_gather(all, mine);
  const std::string prefix = label.empty() ? "memory" : "memory/" + label;
  for (int r = 0; r < comm.size(); ++r) {
    context.metrics().scalar(fmt::format("{}/rank{}/parameter_bytes", prefix, r), all[3 * r].item<double>(), 0);
    context.metrics().scalar(fmt::format("{}/rank{}/gradient_bytes", prefix, r), all[3 * r + 1].item<double>(), 0);
    context.metrics().scalar(fmt::format("{}/rank{}/optimizer_bytes", prefix, r), all[3 * r + 2].item<double>(), 0);
  }
}

std::vector<std::vector<int64_t>> eval_batches(int64_t count, int64_t batch_size, int64_t max_batches) {
  std::vector<std::vector<int64_t>> batches;
  for (int64_t start = 0; start < count; start += batch_size) {
    if (max_batches > 0 && static_cast<int64_t>(batches.size()) == max_batches) break;
    auto& batch = batches.emplace_back();
    for (int64_t i = start; i < std::min(start + batch_size, count); ++i) batch.push_back(i);
  }
  return batches;
}

void export_final_model(StageContext& context, Engine& engine, CausalLM& model, const ModelFamily& family,
                        const Tokenizer& tokenizer) {
  const auto final_dir = context.stage_dir() / "final";
  auto whole = engine.gather_parameters();  // ZeRO-3: every weight back on every rank for the export
  if (!world().is_main()) return;
  family.export_hf(model, final_dir);  // merges LoRA into the exported weights
  tokenizer.save(final_dir);
}

void apply_lora(StageContext& context, torch::nn::Module& module, const ModelFamily& family,
                const TrainOptions& options, const std::vector<std::string>& keep) {
  if (options.lora_dim == 0) return;
  const auto& targets = options.lora_targets.empty() ? family.lora_target_modules() : options.lora_targets;
  LoraOptions lora;
  lora.rank = options.lora_dim;
  lora.scale = options.lora_scaling / static_cast<double>(options.lora_dim);
  const size_t n = enable_lora_where(module, options.lora_module_name, targets, lora);
  std::cout << fmt::format("stage {}: LoRA rank {} on {} linears{}\n", context.stage_name(), lora.rank, n,
                           options.only_optimize_lora ? ", only the adapters trained" : "");
  if (options.only_optimize_lora) freeze_all_but_lora(module, keep);
}

bool NonFiniteGuard::skipped(const StepResult& step, int64_t global_step, const std::string& what) {
  if (!step.boundary) return false;
  if (!step.nonfinite) {
    in_a_row_ = 0;
    return false;
  }
  ++total_;
  ++in_a_row_;
  const std::string whose = what.empty() ? "" : what + " ";
  if (in_a_row_ >= limit_)
    throw std::runtime_error(fmt::format(
        "{} {}optimizer steps in a row had NaN or inf gradients (the last at step {}; max_nonfinite_steps = {}): "
        "the run diverged. Lower the learning rate, check the data, or train in bf16/fp32 instead of fp16; "
        "nothing non-finite was saved and the last checkpoint is intact",
        in_a_row_, whose, global_step + 1, limit_));
  if (world().is_main())
    std::cerr << fmt::format("stage {}: {}step {} skipped: NaN or inf gradients ({} in a row, the stage stops at {})\n",
                             stage_, whose, global_step + 1, in_a_row_, limit_);
  return true;
}

void run_train_loop(StageContext& context, Engine& engine, const TrainOptions& options, int64_t num_examples,
                    const TrainLoopCallbacks& callbacks) {
  TORCH_CHECK(num_examples > 0, "stage ", context.stage_name(), ": no training examples");
  const int64_t total = total_optimizer_steps(options, num_examples);
  const int64_t accum = options.optimizer.gradient_accumulation_steps;
  const fs::path checkpoints = context.stage_dir() / "checkpoints";
  auto& metrics = context.metrics();
  auto& progress = context.progress();
  auto& comm = world();

  const auto& hooks = context.hooks();
  auto call_hooks = [&](const std::function<void(Hook&)>& call) {
    if (hooks.empty()) return;
    auto whole = engine.gather_parameters();  // hooks read every weight (ZeRO-3: gathered; collective)
    for (const auto& hook : hooks) call(*hook);
  };
  call_hooks([&](Hook& hook) {
    hook.set_model_info(callbacks.hook_model);
    hook.on_train_begin(engine.model());
  });

  int64_t start_epoch = 0, start_batch = 0;
  if (auto latest = latest_checkpoint(context.stage_dir())) {
    auto client = engine.load_checkpoint(*latest);
    for (size_t i = 0; i < hooks.size(); ++i) hooks[i]->load_state(*latest / fmt::format("hook-{}", i));
    start_epoch = client.value("epoch", int64_t{0});
    start_batch = client.value("next_batch", int64_t{0});
    std::cout << fmt::format("stage {}: resuming from {} (step {}, epoch {}, batch {})\n", context.stage_name(),
                             latest->string(), engine.global_step(), start_epoch, start_batch);
    metrics.truncate_after(engine.global_step());  // drop what the interrupted attempt logged after it
  } else {
    metrics.truncate_after(-1);
    callbacks.evaluate(0);
  }

  report_memory(context, engine, "");
  progress.start(context.stage_name(), total);
  int64_t last_eval = engine.global_step() == 0 ? 0 : -1;
  double loss_sum = 0.0;
  int64_t loss_count = 0, tokens = 0;
  NonFiniteGuard nonfinite(context.stage_name(), options.max_nonfinite_steps);
  engine.train(true);
  for (int64_t epoch = start_epoch; epoch < options.epochs && engine.global_step() < total; ++epoch) {
    const auto replica = data_parallel();
    auto batches = rank_batches(epoch_batches(num_examples, options.per_device_train_batch_size, context.seed(), epoch),
                                replica.rank, replica.size);
    const int64_t first = epoch == start_epoch ? start_batch : 0;
    for (int64_t b = first; b < static_cast<int64_t>(batches.size()) && engine.global_step() < total; ++b) {
      auto [loss, n] = callbacks.micro_batch(batches[b]);
      loss_sum += loss;
      ++loss_count;
      tokens += n;
      // An epoch's last partial accumulation window still steps (DeepSpeed steps on its boundary count; here
      // the window is closed at the epoch end so that no gradient leaks into the next epoch).
      const bool epoch_end = b + 1 == static_cast<int64_t>(batches.size());
      StepResult step = engine.step();
      if (!step.boundary && epoch_end) {
        while (!step.boundary) {  // close the window: count the missing micro-steps as empty
          engine.backward(at::zeros({}, at::kFloat).requires_grad_(true));
          step = engine.step();
        }
      }
      if (!step.boundary) continue;
      if (nonfinite.skipped(step, engine.global_step())) {  // no row: the step did not happen
        loss_sum = 0.0;
        loss_count = 0;
        tokens = 0;
        continue;
      }
      const int64_t s = engine.global_step();
      if (step.applied) call_hooks([&](Hook& hook) { hook.after_optimizer_step(engine.model(), {s}); });
      // Averaged over the ranks: the loss of the global batch, as one process with accumulation would report.
      const double mean_loss = comm.mean(loss_sum / static_cast<double>(std::max<int64_t>(loss_count, 1)));
      // Each replica's tokens once (the ranks of a tensor-parallel replica all read them).
      tokens = static_cast<int64_t>(comm.sum(static_cast<double>(tokens)) / data_parallel().tensor_parallel_size);
      metrics.scalar("train/loss", mean_loss, s);
      metrics.scalar("train/lr", step.lr, s);
      metrics.scalar("train/grad_norm", step.grad_norm, s);
      if (!step.applied) metrics.scalar("train/skipped_step_loss_scale", step.loss_scale, s);
      progress.update(s, {{"loss", mean_loss}, {"lr", step.lr}}, tokens);
      loss_sum = 0.0;
      loss_count = 0;
      tokens = 0;
      if (options.eval_interval > 0 && s % options.eval_interval == 0 && s != last_eval) {
        callbacks.evaluate(s);
        last_eval = s;
        engine.train(true);
      }
      auto save = [&] {
        nlohmann::json client = {{"epoch", epoch_end ? epoch + 1 : epoch}, {"next_batch", epoch_end ? 0 : b + 1}};
        const fs::path dir = checkpoints / fmt::format("step-{}", s);
        engine.save_checkpoint(dir, client);
        if (comm.is_main()) {
          for (size_t i = 0; i < hooks.size(); ++i) hooks[i]->save_state(dir / fmt::format("hook-{}", i));
          prune_checkpoints(context.stage_dir(), 2);  // keep the two newest
        }
        if (!hooks.empty()) comm.barrier();
      };
      const bool periodic = options.checkpoint_interval > 0 && s % options.checkpoint_interval == 0;
      if (periodic) save();
      if (const int sig = stop_signal_everywhere()) {  // every rank stops after this same step
        if (!periodic) save();
        progress.finish();
        metrics.flush();
        throw StopRequested(sig, fmt::format("stopped by {} after step {} of {}; checkpoint {}", signal_name(sig), s,
                                             total, (checkpoints / fmt::format("step-{}", s)).string()));
      }
    }
  }
  progress.finish();
  metrics.scalar("train/nonfinite_skipped_steps", static_cast<double>(nonfinite.total()), engine.global_step());
  if (last_eval != engine.global_step()) callbacks.evaluate(engine.global_step());
  // Hooks are the same on every rank; the main one writes what they keep (the EMA's folder).
  call_hooks([&](Hook& hook) {
    if (comm.is_main()) hook.on_train_end(engine.model(), context.stage_dir());
  });
  if (!hooks.empty()) comm.barrier();
  metrics.flush();
}

}  // namespace dschat
