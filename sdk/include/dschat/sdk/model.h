#pragma once
// Kind "model": maps an HF config.json and its weight names to a causal LM built from SDK layers.
// The plugin's name is the HF `model_type` it handles ("opt", "bloom", "llama").
//
// A CausalLM names its submodules the way the HF checkpoint names its tensors, so named_parameters() *is* the
// checkpoint's name list ("model.decoder.layers.0.self_attn.q_proj.weight"); loading and exporting need no
// per-family renaming. Tied heads own no parameter of their own (lm_head reuses the embedding).
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>
#include <torch/nn/module.h>

#include "dschat/sdk/export.h"
#include "dschat/sdk/nn/attention.h"
#include "dschat/sdk/nn/kv_cache.h"

namespace dschat {

namespace safetensors {
class CheckpointReader;
}
class ModelFamily;

// Shapes a strategy or generator needs without knowing the family.
struct ModelDims {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;         // width of the residual stream
  int64_t output_hidden_size = 0;  // width of final_hidden() (OPT-350m projects out to word_embed_proj_dim)
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_positions = 0;  // 0: no hard limit (rotary, ALiBi)
};

// One transformer block. A strategy may wrap forward (gather shards, recompute in backward, offload).
class DSCHAT_SDK_API DecoderBlock : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& hidden, const AttentionInputs& inputs, LayerKv* kv) = 0;
};

struct CausalLMOutput {
  at::Tensor logits;  // [B, T, V], undefined when not asked for
  at::Tensor hidden;  // [B, T, output_hidden_size] after the final norm, when asked for (value heads)
};

class DSCHAT_SDK_API CausalLM : public torch::nn::Module {
 public:
  CausalLM(ModelDims dims, const nlohmann::json& hf_config);
  ~CausalLM() override;

  const ModelDims& dims() const { return dims_; }
  const nlohmann::json& hf_config() const;  // the config.json it was built from
  const std::string& model_type() const { return model_type_; }

  // ---- the structure, embed -> blocks[i] -> final_hidden -> lm_logits, for strategies ----
  // Positions, the causal + padding mask and family extras (rotary tables, ALiBi) for one forward pass.
  // attention_mask covers the cached tokens and the new ones: [B, past_length + new_tokens].
  virtual AttentionInputs prepare(const at::Tensor& attention_mask, int64_t past_length, int64_t new_tokens,
                                  at::ScalarType dtype) const;
  virtual at::Tensor embed(const at::Tensor& input_ids, const AttentionInputs& inputs) = 0;
  size_t num_blocks() const { return blocks_.size(); }
  DecoderBlock& block(size_t i);
  std::shared_ptr<DecoderBlock> block_ptr(size_t i) const { return blocks_.at(i); }
  virtual at::Tensor final_hidden(const at::Tensor& hidden) = 0;
  virtual at::Tensor lm_logits(const at::Tensor& final_hidden) = 0;
  // The compute dtype (that of the blocks' weights).
  at::ScalarType dtype() const;
  at::Device device() const;

  // ---- convenience ----
  // input_ids [B, T]; attention_mask [B, past + T] (undefined: all ones). With a cache, the new tokens'
  // keys/values are appended and cache->length advances by T. A static cache (kv_cache.h) takes T = 1 and an
  // attention_mask of [B, capacity].
  CausalLMOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache = nullptr,
                         bool return_hidden = false, bool return_logits = true);
  KvCache allocate_cache(int64_t batch, int64_t capacity) const;

  // ---- tensor parallelism (tensor_parallel.h) ----
  // A shard's place in its group. dims() stays the whole model's (logits are gathered to the full vocabulary);
  // the KV cache holds num_kv_heads / size heads.
  struct TensorParallelPlacement {
    int rank = 0;
    int size = 1;
  };
  const TensorParallelPlacement& tensor_parallel() const { return tensor_parallel_; }
  void set_tensor_parallel(TensorParallelPlacement placement) { tensor_parallel_ = placement; }

  // When set, forward() runs block i through this instead of calling it directly: a frozen model whose block
  // weights are sharded over ranks or kept in host memory (frozen_model.h) brings them in around each block.
  using BlockRunner = std::function<at::Tensor(size_t index, DecoderBlock& block, const at::Tensor& hidden,
                                               const AttentionInputs& inputs, LayerKv* kv)>;
  void set_block_runner(BlockRunner runner) { block_runner_ = std::move(runner); }

  // The family that built this model, set by the host when it loads a stage's model (null for models built
  // directly, e.g. in tests): what a strategy that re-lays the model out (tp) asks for its partition spec.
  std::shared_ptr<const ModelFamily> family() const { return family_; }
  void set_family(std::shared_ptr<const ModelFamily> family) { family_ = std::move(family); }

 protected:
  // Called once by the family's constructor with the blocks it registered (under its own names).
  void set_blocks(std::vector<std::shared_ptr<DecoderBlock>> blocks) { blocks_ = std::move(blocks); }

 private:
  ModelDims dims_;
  std::shared_ptr<const nlohmann::json> hf_config_;
  std::string model_type_;
  std::vector<std::shared_ptr<DecoderBlock>> blocks_;
  TensorParallelPlacement tensor_parallel_;
  std::shared_ptr<const ModelFamily> family_;
  BlockRunner block_runner_;
  // Set by forward() for the duration of a static-cache step, read by the base prepare(): families call it from
  // their own prepare() with the same signature, so the position of the column being written reaches them here.
  at::Tensor static_write_position_;
};

struct ModelOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
};

// How tensor parallelism splits one weight (Megatron terms).
enum class TensorSplit {
  replicated,
  rows,     // split dim 0: column-parallel linears (q/k/v, fc1), their biases, a vocab-parallel lm_head
  columns,  // split dim 1: row-parallel linears (out_proj, fc2); their biases stay replicated
};
DSCHAT_SDK_API const char* to_string(TensorSplit split);

struct ExportOptions {
  uint64_t max_shard_bytes = 5ull << 30;
  std::optional<at::ScalarType> dtype;  // default: the model's dtype
};

// The error for a checkpoint that does not fit the model built from its config.json.
class DSCHAT_SDK_API CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class DSCHAT_SDK_API ModelFamily {
 public:
  static constexpr const char* kind = "model";
  // 2: static KV cache (KvCache::write_position, AttentionInputs::write_position, CausalLM's layout).
  static constexpr int interface_version = 2;
  virtual ~ModelFamily() = default;

  virtual std::string model_type() const = 0;  // HF's model_type
  // Builds a randomly initialised model from an HF config.json; bad or missing fields are errors naming them.
  virtual std::shared_ptr<CausalLM> build(const nlohmann::json& hf_config, const ModelOptions& options) const = 0;
  // Linears LoRA may target, by their own name ("q_proj", "fc1", ...).
  virtual std::vector<std::string> lora_target_modules() const = 0;
  // The split of every parameter of `model`, keyed by parameter (= HF) name.
  virtual std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_spec(const CausalLM& model) const = 0;

  // HF name <-> parameter name. Identity for the in-tree families (modules carry HF names); a third-party
  // family whose modules are named otherwise overrides both.
  virtual std::string to_hf_name(const std::string& parameter_name) const { return parameter_name; }
  virtual std::string from_hf_name(const std::string& hf_name) const { return hf_name; }
  // Prefix of the base model ("model", "transformer"): checkpoints of the bare base model (facebook/opt-*) name
  // their tensors without it, and load_state adds it back.
  virtual std::string base_model_prefix() const = 0;
  // Checkpoint tensors that are fine to ignore (a tied lm_head.weight, rotary inv_freq buffers).
  virtual bool ignorable_tensor(const std::string& hf_name, const CausalLM& model) const;

  // Copies every parameter from the checkpoint (converting to the model's dtype). A missing tensor, one whose
  // shape differs from what config.json implies, or an unexpected one is a CheckpointError naming it.
  void load_state(CausalLM& model, const safetensors::CheckpointReader& reader) const;
  // What load_state checks, from the checkpoint's header alone (no tensor data read): every name, shape and a
  // floating-point dtype. `dschat validate` runs it on a model built without initialising its weights.
  void check_state(const CausalLM& model, const safetensors::CheckpointReader& reader) const;

  // Writes config.json, generation_config.json and safetensors (LoRA fused in, adapters not written) so that
  // transformers' from_pretrained loads the folder.
  void export_hf(CausalLM& model, const std::filesystem::path& dir, const ExportOptions& options = {}) const;
  // Reads dir/config.json, builds and loads.
  std::shared_ptr<CausalLM> from_pretrained(const std::filesystem::path& dir, const ModelOptions& options) const;
  // What from_pretrained would find wrong with the folder's weights (check_state), from config.json and the
  // checkpoint headers alone: no tensor data is read. CheckpointError naming the file and tensor.
  void check_pretrained(const std::filesystem::path& dir, const ModelOptions& options) const;

 private:
  // dir/config.json built in options' dtype with weight initialisation skipped (their values are undefined).
  std::shared_ptr<CausalLM> build_for_checkpoint(const std::filesystem::path& dir, const ModelOptions& options) const;
};

// A tensor-parallel spec from module names: linears named in `column_parallel` split by rows (weight and bias),
// those in `row_parallel` by columns (bias replicated), everything else is replicated.
DSCHAT_SDK_API std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_by_module(
    const CausalLM& model, const std::vector<std::string>& column_parallel,
    const std::vector<std::string>& row_parallel);

// The family among `families` whose model_type() is config.json's model_type; an error naming the type and the
// available families when none is.
DSCHAT_SDK_API const ModelFamily& select_family(const nlohmann::json& hf_config,
                                                const std::vector<std::shared_ptr<ModelFamily>>& families);

// Reads a JSON object from `file`; errors name the file and `what` it should be ("the model's config.json").
DSCHAT_SDK_API nlohmann::json read_json_object(const std::filesystem::path& file, const std::string& what);

// Reads a config.json (errors name the file).
DSCHAT_SDK_API nlohmann::json read_hf_config(const std::filesystem::path& dir_or_file);
// config.json's "model_type", which picks the model plugin; std::invalid_argument naming dir/config.json when it
// has none.
DSCHAT_SDK_API std::string model_type_of(const nlohmann::json& hf_config, const std::filesystem::path& dir);

// Typed config.json access whose errors name the key and what was expected.
DSCHAT_SDK_API int64_t hf_int(const nlohmann::json& config, const char* key);
DSCHAT_SDK_API int64_t hf_int(const nlohmann::json& config, const char* key, int64_t fallback);
DSCHAT_SDK_API double hf_float(const nlohmann::json& config, const char* key, double fallback);
DSCHAT_SDK_API bool hf_bool(const nlohmann::json& config, const char* key, bool fallback);
DSCHAT_SDK_API std::string hf_string(const nlohmann::json& config, const char* key, const std::string& fallback);

}  // namespace dschat
