#pragma once
// The epoch / micro-batch / optimizer-step loop that the supervised stages (sft, reward) share: seeded shuffling
// per epoch, gradient accumulation through the engine, evaluation at the start, every eval_interval steps and at
// the end, metrics and progress, periodic checkpoints (stage_dir/checkpoints/step-N) and resuming from the
// latest of them.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/export.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

// Example indices of each micro-batch of one epoch: a permutation seeded by (seed, epoch) cut into batches of
// batch_size; the last, partial batch is kept (DataLoader with drop_last=False).
DSCHAT_SDK_API std::vector<std::vector<int64_t>> epoch_batches(int64_t count, int64_t batch_size, uint64_t seed,
                                                               int64_t epoch);

// This rank's micro-batches: every world_size-th batch starting at `rank`, wrapping around at the end so that
// every rank takes the same number of steps (as DistributedSampler pads). Rank r's j-th micro-batch is global
// batch j * world_size + r, so W ranks with accumulation A step on exactly the batches one process with
// accumulation W * A steps on: the gradients agree.
DSCHAT_SDK_API std::vector<std::vector<int64_t>> rank_batches(std::vector<std::vector<int64_t>> batches, int rank,
                                                              int world_size);

// Optimizer steps of the whole stage on each rank: epochs * ceil(ceil(batches / replicas) / accumulation),
// capped by max_steps; replicas = data_parallel().size (the world size unless a strategy splits models).
DSCHAT_SDK_API int64_t total_optimizer_steps(const TrainOptions& options, int64_t num_examples);

// Prints what this rank holds for `engine` (parameters, gradients, optimizer states) and records every rank's
// figures as metrics memory[/label]/rankR/*_bytes (collective: every rank calls it).
DSCHAT_SDK_API void report_memory(StageContext& context, const Engine& engine, const std::string& label);

// The complete stage_dir/checkpoints/step-N folders (those holding `marker`, the file written last), oldest first.
DSCHAT_SDK_API std::vector<std::pair<int64_t, std::filesystem::path>> complete_checkpoints(
    const std::filesystem::path& stage_dir, const std::string& marker = "engine.json");
// The newest of them, if any.
DSCHAT_SDK_API std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& stage_dir,
                                                                      const std::string& marker = "engine.json");
// Removes all but the `keep` newest of them.
DSCHAT_SDK_API void prune_checkpoints(const std::filesystem::path& stage_dir, size_t keep,
                                      const std::string& marker = "engine.json");

// Optimizer steps the engine skipped because the gradients held NaN or inf (the weights stay as they were). A
// few in a row can pass (one bad batch); `limit` in a row stop the stage with an error, so a diverged model is
// never trained on, saved or marked complete.
class DSCHAT_SDK_API NonFiniteGuard {
 public:
  NonFiniteGuard(std::string stage, int64_t limit) : stage_(std::move(stage)), limit_(limit) {}
  // True when `step` was skipped for non-finite values (reported on stderr); throws at the limit.
  bool skipped(const StepResult& step, int64_t global_step, const std::string& what = "");
  int64_t total() const { return total_; }

 private:
  std::string stage_;
  int64_t limit_;
  int64_t in_a_row_ = 0;
  int64_t total_ = 0;
};

// The stage's LoRA when options.lora_dim > 0: adapters on the family's lora_target_modules() (or lora_targets)
// under lora_module_name, scaled lora_scaling / lora_dim; with only_optimize_lora every other parameter frozen
// except names containing one of `keep`. Prints what it did; no-op for lora_dim 0.
DSCHAT_SDK_API void apply_lora(StageContext& context, torch::nn::Module& module, const ModelFamily& family,
                               const TrainOptions& options, const std::vector<std::string>& keep = {});

// Held-out example indices in order, cut into batches of batch_size, at most max_batches of them (0: all):
// the evaluation passes of the supervised stages (DeepSpeed-Chat's eval_iters).
DSCHAT_SDK_API std::vector<std::vector<int64_t>> eval_batches(int64_t count, int64_t batch_size, int64_t max_batches);

// The stage's trained causal LM as an HF folder with its tokenizer in stage_dir/final (LoRA merged into the
// weights). Collective: under ZeRO-3 every rank gathers the weights; the main rank writes.
DSCHAT_SDK_API void export_final_model(StageContext& context, Engine& engine, CausalLM& model,
                                       const ModelFamily& family, const Tokenizer& tokenizer);

struct TrainLoopCallbacks {
  // Forward + engine.backward on one micro-batch; returns the (unscaled) loss value and the tokens it covered.
  std::function<std::pair<double, int64_t>(const std::vector<int64_t>& example_indices)> micro_batch;
  // Evaluates the model (eval mode, no grad) and reports metrics at optimizer step `step`.
  std::function<void(int64_t step)> evaluate;
  // What the stage's hooks are told about engine.model() (family and tokenizer, for hooks that export it).
  HookModelInfo hook_model;
};

// Runs the loop over `num_examples` training examples. The engine's schedule must span
// total_optimizer_steps(options, num_examples). The stage's hooks (context.hooks()) see engine.model() with its
// weights gathered: on_train_begin, after_optimizer_step after every applied step, save_state / load_state with
// each checkpoint (hook-<i>), and on_train_end (main rank) before it returns.
DSCHAT_SDK_API void run_train_loop(StageContext& context, Engine& engine, const TrainOptions& options,
                                   int64_t num_examples, const TrainLoopCallbacks& callbacks);

// Drops trailing columns that are padding in every row (right-padded batches): with causal attention the
// values at the remaining positions, and so the SFT and reward losses, are unchanged, and short batches skip
// the work on max_seq_len - longest pad columns. Returns the number of columns kept.
DSCHAT_SDK_API int64_t trim_right_padding(at::Tensor& attention_mask, std::vector<at::Tensor*> others);

}  // namespace dschat
