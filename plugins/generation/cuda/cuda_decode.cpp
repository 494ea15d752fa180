// `cuda`: decoding for GPUs. Every shape stays the same for the whole call, so one decode step is the same
// kernels on the same buffers each time and, on CUDA, is captured once in a CUDA graph and replayed:
//   - the batch keeps all its rows: a finished row keeps decoding and its tokens are discarded (pad, log-prob 0);
//   - the KV cache is static (kv_cache.h): one column written per step at a position held on the device, the
//     attention (SDPA on CUDA) runs over the whole capacity with the unwritten columns masked;
//   - the uniforms of every step are drawn before the first, from the same stream and in the same order as
//     `kv-cache` draws them, and the pick (generation::pick_next: temperature, top-k, top-p, min_new_tokens, eos)
//     runs on the device. So given equal logits both plugins choose equal tokens.
// The host reads nothing between steps except, every `sync_every` steps, whether every row has ended.
// On the CPU the same steps run eagerly: that is how the GPU path's sampling is tested against `kv-cache` there.
#include <memory>

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/grad_mode.h>

#ifdef DSCHAT_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include <fmt/format.h>

#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

// The device-side state of one generate() call.
struct DecodeState {
  at::Tensor mask;            // [B, P + T] int64: prompt mask, then 1 for each column written
  at::Tensor answers;         // [B, T] int64, pad after a row's end
  at::Tensor logprobs;        // [B, T] float32, 0 after a row's end
  at::Tensor lengths;         // [B] int64: tokens generated, eos included
  at::Tensor done;            // [B] bool
  at::Tensor last_tokens;     // [B, 1] int64: what the next step feeds
  at::Tensor step;            // [1] int64: the answer column the next pick writes
  at::Tensor uniforms;        // [T, B] float32, or undefined when greedy
  KvCache cache;
};

class CudaGenerator : public Generator {
 public:
  explicit CudaGenerator(const ConfigTable& table)
      : defaults_(sampling_options_from_config(table)),
        stream_(generation::make_cpu_generator(static_cast<uint64_t>(table.get_int("seed", 1234, 0)))),
        use_graph_(table.get_bool("cuda_graph", true)),
        sync_every_(table.get_int("sync_every", 16, 1)) {}

  const SamplingOptions& defaults() const override { return defaults_; }

  GenerationResult generate(CausalLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_mask,
                            const SamplingOptions& options) override {
    options.validate();
    generation::check_prompts(prompt_ids, prompt_mask);
    at::NoGradGuard no_grad;
    const auto device = model.device();
#ifdef DSCHAT_WITH_CUDA
    if (device.is_cuda()) {
      // Graphs are captured on a side stream; everything of this call runs there, after the caller's work.
      c10::cuda::CUDAGuard device_guard(device);
      c10::cuda::getCurrentCUDAStream().synchronize();
      auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index());
      GenerationResult out;
      {
        c10::cuda::CUDAStreamGuard stream_guard(side);
        out = run(model, prompt_ids, prompt_mask, options);
        side.synchronize();
      }
      // Hand the caller tensors that belong to its own stream.
      out.sequences = out.sequences.clone();
      out.attention_mask = out.attention_mask.clone();
      out.answer_mask = out.answer_mask.clone();
      out.logprobs = out.logprobs.clone();
      return out;
    }
#endif
    return run(model, prompt_ids, prompt_mask, options);
  }

 private:
  GenerationResult run(CausalLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_mask,
                       const SamplingOptions& options) {
    const auto device = model.device();
    const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device);
    const int64_t batch = prompt_ids.size(0), prompt_len = prompt_ids.size(1);
    const int64_t max_new = options.max_new_tokens;
    auto rng = generation::generator_for(options, stream_);

    DecodeState s;
    auto ids = prompt_ids.to(device, at::kLong);
    s.mask = at::zeros({batch, prompt_len + max_new}, long_opts);
    s.mask.narrow(1, 0, prompt_len).copy_(prompt_mask.to(device, at::kLong));
    s.answers = at::full({batch, max_new}, options.pad_token_id, long_opts);
    s.logprobs = at::zeros({batch, max_new}, at::TensorOptions().dtype(at::kFloat).device(device));
    s.lengths = at::zeros({batch}, long_opts);
    s.done = at::zeros({batch}, long_opts.dtype(at::kBool));
    s.step = at::zeros({1}, long_opts);
    if (options.do_sample) {
      // What kv-cache draws step by step (one uniform per row per step), drawn at once from a copy of the stream;
      // the stream itself advances below by the steps that ran.
      auto copy = rng.clone();
      s.uniforms = at::rand({max_new, batch}, copy, at::TensorOptions().dtype(at::kFloat)).to(device);
    }

    // Prefill: the prompt in one pass, written to columns [0, P) of the cache.
    s.cache = model.allocate_cache(batch, prompt_len + max_new);
    auto hidden = model.forward(ids, s.mask.narrow(1, 0, prompt_len), &s.cache, /*return_hidden=*/true,
                                /*return_logits=*/false).hidden;
    record(s, model.lm_logits(hidden.narrow(1, prompt_len - 1, 1)).squeeze(1), 0, options);
    s.cache.write_position = at::full({1}, prompt_len, long_opts);

    bool stopped = options.on_step && !call_on_step(s, 0, options);
    std::unique_ptr<StepGraph> graph;
    for (int64_t t = 1; t < max_new && !stopped; ++t) {
      if (options.on_step || t % sync_every_ == 0) {
        if (s.done.all().item<bool>()) break;
      }
      if (graph) {
        graph->replay();
      } else {
        // Graphs need t past min_new_tokens (the pick then no longer depends on t) and two eager steps first, so
        // that lazily created handles and workspaces exist before capture.
        const bool warm = t >= options.min_new_tokens + 3;
        if (warm && use_graph_ && !options.on_step && device.is_cuda()) graph = capture(model, s, t, options);
        if (graph) graph->replay();
        else decode_step(model, s, t, options);
      }
      if (options.on_step && !call_on_step(s, t, options)) stopped = true;
    }

    const int64_t answer_len = s.lengths.max().item<int64_t>();
    // Advance the stream as kv-cache would have: one draw of `batch` uniforms per step it runs.
    if (options.do_sample && !options.seed)
      at::rand({answer_len * batch}, rng, at::TensorOptions().dtype(at::kFloat));

    GenerationResult out;
    out.prompt_length = prompt_len;
    out.answer_mask = (at::arange(answer_len, long_opts).unsqueeze(0) < s.lengths.unsqueeze(1)).to(at::kLong);
    out.sequences = at::cat({ids, s.answers.narrow(1, 0, answer_len)}, 1);
    out.attention_mask = at::cat({prompt_mask.to(device, at::kLong), out.answer_mask}, 1);
    out.logprobs = s.logprobs.narrow(1, 0, answer_len).contiguous();
    return out;
  }

  // Picks answer token t from the logits [B, V] and writes it to the state; rows already done record nothing.
  static void record(DecodeState& s, const at::Tensor& logits, int64_t t, const SamplingOptions& options) {
    at::Tensor uniforms;
    if (s.uniforms.defined()) uniforms = s.uniforms.index_select(0, s.step).squeeze(0);
    auto pick = generation::pick_next(logits, t, options, uniforms);
    auto running = s.done.logical_not();
    auto tokens = at::where(running, pick.tokens, options.pad_token_id);
    s.answers.index_copy_(1, s.step, tokens.unsqueeze(1));
    s.logprobs.index_copy_(1, s.step, at::where(running, pick.logprobs, 0.0f).unsqueeze(1));
    s.lengths.add_(running.to(at::kLong));
    s.done.logical_or_(generation::is_eos(pick.tokens, options));
    s.last_tokens = pick.tokens.unsqueeze(1);
    s.step.add_(1);
  }

  // Feeds the last tokens at the cache's write position, then picks answer token t.
  static void decode_step(CausalLM& model, DecodeState& s, int64_t t, const SamplingOptions& options) {
    s.mask.index_fill_(1, s.cache.write_position, 1);
    auto hidden = model.forward(s.last_tokens, s.mask, &s.cache, /*return_hidden=*/true,
                                /*return_logits=*/false).hidden;
    s.cache.write_position.add_(1);
    record(s, model.lm_logits(hidden).squeeze(1), t, options);
  }

  // on_step sees the rows that were running before step t and the tokens they got.
  static bool call_on_step(const DecodeState& s, int64_t t, const SamplingOptions& options) {
    auto lengths = s.lengths.cpu();
    auto rows = at::nonzero(lengths.eq(t + 1)).squeeze(1);
    if (rows.numel() == 0) return true;
    auto tokens = s.answers.select(1, t).cpu().index_select(0, rows);
    return options.on_step(t, tokens, rows);
  }

#ifdef DSCHAT_WITH_CUDA
  // One decode step recorded on the current (side) stream. Its inputs and outputs are the state's buffers, which
  // stay put for the whole call; last_tokens is copied in place so the graph reads and writes one buffer.
  struct StepGraph {
    at::cuda::CUDAGraph graph;
    void replay() { graph.replay(); }
  };
  std::unique_ptr<StepGraph> capture(CausalLM& model, DecodeState& s, int64_t t, const SamplingOptions& options) {
    s.last_tokens = s.last_tokens.clone();  // a buffer of its own, updated in place by the captured step
    auto tokens_buffer = s.last_tokens;
    auto out = std::make_unique<StepGraph>();
    try {
      out->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      s.mask.index_fill_(1, s.cache.write_position, 1);
      auto hidden = model.forward(tokens_buffer, s.mask, &s.cache, true, false).hidden;
      s.cache.write_position.add_(1);
      record(s, model.lm_logits(hidden).squeeze(1), t, options);
      tokens_buffer.copy_(s.last_tokens);
      out->graph.capture_end();
      s.last_tokens = tokens_buffer;
      return out;
    } catch (const std::exception& e) {
      // Something in the step syncs with the host (e.g. dynamic rope scaling reads the longest position): decode
      // eagerly instead. Nothing of the step ran, since capture only records.
      try {
        out->graph.capture_end();
      } catch (const std::exception&) {
      }
      (void)cudaGetLastError();
      s.last_tokens = tokens_buffer;
      if (!warned_) {
        std::string what = e.what();
        fmt::print(stderr, "[cuda] decode step not captured in a CUDA graph ({}); decoding eagerly\n",
                   what.substr(0, what.find('\n')));
        warned_ = true;
      }
      use_graph_ = false;
      return nullptr;
    }
  }
#else
  struct StepGraph {
    void replay() {}
  };
  std::unique_ptr<StepGraph> capture(CausalLM&, DecodeState&, int64_t, const SamplingOptions&) { return nullptr; }
#endif

  SamplingOptions defaults_;
  at::Generator stream_;
  bool use_graph_;
  int64_t sync_every_;
  bool warned_ = false;
};

}  // namespace

DSCHAT_PLUGIN("cuda", "0.1.0", "GPU decoding: static KV cache, SDPA, sampling on the device, CUDA graphs") {
  registrar.add<dschat::Generator>(
      "cuda",
      "static KV cache and batch, sampling on the device, the decode step replayed as a CUDA graph (runs eagerly "
      "on the CPU)",
      [](const dschat::ConfigTable& options) { return std::make_shared<CudaGenerator>(options); });
}
