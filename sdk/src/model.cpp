#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/init.h"

#include <c10/core/DefaultDtype.h>

#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/safetensors.h"
#include "nesting_limits.h"

namespace dschat {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------- CausalLM

CausalLM::CausalLM(ModelDims dims, const nlohmann::json& hf_config)
    : dims_(dims), hf_config_(std::make_shared<const nlohmann::json>(hf_config)),
      model_type_(hf_config.value("model_type", std::string())) {}

CausalLM::~CausalLM() = default;

const nlohmann::json& CausalLM::hf_config() const { return *hf_config_; }

DecoderBlock& CausalLM::block(size_t i) {
  TORCH_CHECK(i < blocks_.size(), "block ", i, " out of range (the model has ", blocks_.size(), ")");
  return *blocks_[i];
}

at::ScalarType CausalLM::dtype() const {
  for (const auto& block : blocks_) {
    for (const auto& p : block->parameters()) return p.scalar_type();
  }
  for (const auto& p : parameters()) return p.scalar_type();
  return at::kFloat;
}

at::Device CausalLM::device() const {
  for (const auto& p : parameters()) return p.device();
  return at::kCPU;
}

AttentionInputs CausalLM::prepare(const at::Tensor& attention_mask, int64_t past_length, int64_t new_tokens,
                                  at::ScalarType dtype) const {
  AttentionInputs inputs;
  inputs.attention_mask = attention_mask;
  inputs.past_length = past_length;
  if (static_write_position_.defined()) {
    // One token written at a column that need not be the last: its position is the cumsum there.
    auto mask = attention_mask.to(at::kLong);
    inputs.position_ids = (mask.cumsum(1) - 1).index_select(1, static_write_position_);
    inputs.write_position = static_write_position_;
  } else {
    inputs.position_ids = positions_from_mask(attention_mask, new_tokens);
  }
  // A static step's query sits at the last column, so causality admits every key and the mask does the rest.
  inputs.bias = causal_padding_bias(attention_mask, past_length, new_tokens, dtype);
  return inputs;
}

CausalLMOutput CausalLM::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask, KvCache* cache,
                                 bool return_hidden, bool return_logits) {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [batch, tokens], got ", input_ids.sizes());
  const int64_t batch = input_ids.size(0), tokens = input_ids.size(1);
  const bool static_step = cache != nullptr && cache->write_position.defined();
  TORCH_CHECK(!static_step || tokens == 1, "a static KV cache takes one token per step, got ", tokens);
  const int64_t past = static_step ? cache->capacity() - 1 : cache != nullptr ? cache->length : 0;
  at::Tensor mask = attention_mask.defined()
                        ? attention_mask.to(input_ids.device())
                        : at::ones({batch, past + tokens}, input_ids.options().dtype(at::kLong));
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == past + tokens, "attention_mask ",
              mask.sizes(), " must be [batch, cached + new tokens] = [", batch, ", ", past + tokens, "]");
  if (cache != nullptr) {
    TORCH_CHECK(cache->layers.size() == blocks_.size(), "KV cache has ", cache->layers.size(),
                " layers, the model ", blocks_.size());
    TORCH_CHECK(cache->batch_size() == batch, "KV cache holds ", cache->batch_size(), " rows, the batch has ",
                batch);
  }
  struct StaticScope {  // cleared on every exit, exceptions included
    at::Tensor& slot;
    ~StaticScope() { slot = at::Tensor(); }
  } scope{static_write_position_};
  if (static_step) static_write_position_ = cache->write_position;
  auto inputs = prepare(mask, past, tokens, dtype());
  auto hidden = embed(input_ids, inputs);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    LayerKv* kv = cache != nullptr ? &cache->layers[i] : nullptr;
    hidden = block_runner_ ? block_runner_(i, *blocks_[i], hidden, inputs, kv) : blocks_[i]->forward(hidden, inputs, kv);
  }
  if (cache != nullptr && !static_step) cache->length += tokens;
  CausalLMOutput out;
  hidden = final_hidden(hidden);
  if (return_hidden) out.hidden = hidden;
  if (return_logits) out.logits = lm_logits(hidden);
  return out;
}

KvCache CausalLM::allocate_cache(int64_t batch, int64_t capacity) const {
  return KvCache::allocate(static_cast<int64_t>(blocks_.size()), batch, dims_.num_kv_heads / tensor_parallel_.size,
                           capacity, dims_.head_dim, at::TensorOptions().dtype(dtype()).device(device()));
}

const char* to_string(TensorSplit split) {
  switch (split) {
    case TensorSplit::replicated: return "replicated";
    case TensorSplit::rows: return "rows";
    case TensorSplit::columns: return "columns";
  }
  return "?";
}

std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_by_module(
    const CausalLM& model, const std::vector<std::string>& column_parallel,
    const std::vector<std::string>& row_parallel) {
  auto module_of = [](const std::string& param) {  // "a.b.q_proj.weight" -> ("q_proj", "weight")
    auto last = param.rfind('.');
    auto owner = param.substr(0, last == std::string::npos ? 0 : last);
    auto dot = owner.rfind('.');
    return std::make_pair(dot == std::string::npos ? owner : owner.substr(dot + 1),
                          last == std::string::npos ? param : param.substr(last + 1));
  };
  auto contains = [](const std::vector<std::string>& list, const std::string& name) {
    return std::find(list.begin(), list.end(), name) != list.end();
  };
  std::vector<std::pair<std::string, TensorSplit>> spec;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    auto [module, leaf] = module_of(item.key());
    TensorSplit split = TensorSplit::replicated;
    if (contains(column_parallel, module)) split = TensorSplit::rows;
    else if (contains(row_parallel, module) && leaf == "weight") split = TensorSplit::columns;
    spec.emplace_back(item.key(), split);
  }
  return spec;
}

// ------------------------------------------------------------------------------------------ config access

namespace {
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  throw CheckpointError(out.str());
}
template <class... Parts>
void check(bool condition, const Parts&... parts) {
  if (!condition) fail(parts...);
}
const nlohmann::json& field(const nlohmann::json& config, const char* key) {
  check(config.is_object(), "config.json must be a JSON object");
  auto it = config.find(key);
  check(it != config.end() && !it->is_null(), "config.json: missing required key '", key, "'");
  return *it;
}

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool is_lora_parameter(const std::string& name) {
  return ends_with(name, ".lora_right_weight") || ends_with(name, ".lora_left_weight");
}

void write_text_atomically(const fs::path& file, const std::string& text) {
  auto tmp = file;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("cannot write " + tmp.string());
    out << text;
    if (!out.flush()) throw std::runtime_error("error writing " + tmp.string());
  }
  fs::rename(tmp, file);
}

const char* hf_dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: fail("cannot export weights as ", dtype, " (float32, bfloat16 or float16)");
  }
}
}  // namespace

int64_t hf_int(const nlohmann::json& config, const char* key) {
  const auto& v = field(config, key);
  check(v.is_number_integer(), "config.json: '", key, "' must be an integer, got ", v.dump());
  return v.get<int64_t>();
}

int64_t hf_int(const nlohmann::json& config, const char* key, int64_t fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  return hf_int(config, key);
}

double hf_float(const nlohmann::json& config, const char* key, double fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  const auto& v = config[key];
  check(v.is_number(), "config.json: '", key, "' must be a number, got ", v.dump());
  return v.get<double>();
}

bool hf_bool(const nlohmann::json& config, const char* key, bool fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  const auto& v = config[key];
  check(v.is_boolean(), "config.json: '", key, "' must be true or false, got ", v.dump());
  return v.get<bool>();
}

std::string hf_string(const nlohmann::json& config, const char* key, const std::string& fallback) {
  if (!config.contains(key) || config[key].is_null()) return fallback;
  const auto& v = config[key];
  check(v.is_string(), "config.json: '", key, "' must be a string, got ", v.dump());
  return v.get<std::string>();
}

nlohmann::json read_json_object(const fs::path& file, const std::string& what) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file.string() + ": cannot open " + what);
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (auto deep = limits::json_nesting_excess(text))
    throw std::runtime_error(fmt::format("{}: invalid JSON: nests deeper than {} levels (line {}, column {})",
                                         file.string(), limits::kMaxJsonDepth, deep->line, deep->column));
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(file.string() + ": invalid JSON: " + e.what());
  }
  if (!value.is_object()) throw std::runtime_error(file.string() + ": must hold a JSON object");
  return value;
}

nlohmann::json read_hf_config(const fs::path& dir_or_file) {
  const fs::path file = fs::is_directory(dir_or_file) ? dir_or_file / "config.json" : dir_or_file;
  return read_json_object(file, "the model's config.json");
}

std::string model_type_of(const nlohmann::json& hf_config, const fs::path& dir) {
  if (!hf_config.is_object() || !hf_config.contains("model_type") || !hf_config["model_type"].is_string())
    throw std::invalid_argument((dir / "config.json").string() +
                                " has no string \"model_type\" (which model family is this?)");
  return hf_config["model_type"].get<std::string>();
}

const ModelFamily& select_family(const nlohmann::json& hf_config,
                                 const std::vector<std::shared_ptr<ModelFamily>>& families) {
  check(hf_config.is_object() && hf_config.contains("model_type") && hf_config["model_type"].is_string(),
              "config.json: missing 'model_type' (which model family is this?)");
  const auto type = hf_config["model_type"].get<std::string>();
  std::string available;
  for (const auto& family : families) {
    if (family->model_type() == type) return *family;
    available += (available.empty() ? "" : ", ") + family->model_type();
  }
  fail("config.json: model_type '", type, "' has no model plugin (available: ", available, ")");
}

// ------------------------------------------------------------------------------------------- ModelFamily

bool ModelFamily::ignorable_tensor(const std::string& hf_name, const CausalLM& model) const {
  (void)model;
  // A tied head's copy of the embedding, and buffers old checkpoints saved (rotary tables, GPT-style masks).
  return hf_name == "lm_head.weight" || ends_with(hf_name, ".rotary_emb.inv_freq") ||
         ends_with(hf_name, ".attn.masked_bias");
}

namespace {

// Each parameter's tensor name in the checkpoint. Checkpoints of the bare base model (facebook/opt-*:
// "decoder.layers...") lack the "model." prefix.
std::vector<std::pair<std::string, at::Tensor>> checkpoint_names(const ModelFamily& family, const CausalLM& model,
                                                                 const safetensors::CheckpointReader& reader) {
  const std::string prefix = family.base_model_prefix() + ".";
  bool bare = !prefix.empty() && prefix != ".";
  for (const auto& name : reader.names()) {
    if (starts_with(name, prefix)) bare = false;
  }
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (is_lora_parameter(item.key())) continue;
    std::string name = family.to_hf_name(item.key());
    if (bare && starts_with(name, prefix)) name = name.substr(prefix.size());
    out.emplace_back(std::move(name), item.value());
  }
  return out;
}

}  // namespace

void ModelFamily::check_state(const CausalLM& model, const safetensors::CheckpointReader& reader) const {
  const std::string where = "checkpoint " + reader.path().string();
  if (reader.names().empty()) throw CheckpointError(where + ": the weights hold no tensors");
  std::set<std::string> used;
  std::vector<std::string> missing;
  for (const auto& [name, param] : checkpoint_names(*this, model, reader)) {
    if (!reader.contains(name)) {
      missing.push_back(name);
      continue;
    }
    const auto& info = reader.info(name);
    if (at::IntArrayRef(info.shape) != param.sizes()) {
      throw CheckpointError(where + ": tensor '" + name + "' has shape " + shape_str(info.shape) +
                            " but config.json implies " + shape_str(param.sizes()));
    }
    if (!at::isFloatingType(info.dtype)) {
      throw CheckpointError(where + ": tensor '" + name + "' is stored as " + std::string(c10::toString(info.dtype)) +
                            ", not a floating-point type a weight can be loaded from");
    }
    used.insert(name);
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", '" : "'") + missing[i] + "'";
    if (missing.size() > 5) list += fmt::format(" and {} more", missing.size() - 5);
    throw CheckpointError(where + ": missing tensor" + (missing.size() > 1 ? "s " : " ") + list +
                          " (the " + model_type() + " model built from config.json needs it)");
  }
  for (const auto& name : reader.names()) {
    if (used.count(name) || ignorable_tensor(name, model)) continue;
    throw CheckpointError(where + ": unexpected tensor '" + name + "' (no parameter of the " + model_type() +
                          " model built from config.json has this name)");
  }
}

void ModelFamily::load_state(CausalLM& model, const safetensors::CheckpointReader& reader) const {
  check_state(model, reader);  // every name and shape, before the first tensor is read
  at::NoGradGuard no_grad;
  for (auto& [name, param] : checkpoint_names(*this, model, reader)) param.copy_(reader.load(name, param.scalar_type()));
}

void ModelFamily::export_hf(CausalLM& model, const fs::path& dir, const ExportOptions& options) const {
  const at::ScalarType dtype = options.dtype.value_or(model.dtype());
  fs::create_directories(dir);

  std::map<std::string, at::Tensor> merged;  // "<linear>.weight" -> W + s R L for layers carrying LoRA
  for (auto& item : model.named_modules()) {
    if (auto* linear = dynamic_cast<LoraLinearImpl*>(item.value().get()); linear && linear->has_lora()) {
      merged[item.key() + ".weight"] = linear->merged_weight();
    }
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  at::NoGradGuard no_grad;
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    if (is_lora_parameter(item.key())) continue;
    auto it = merged.find(item.key());
    const at::Tensor& value = it != merged.end() ? it->second : item.value();
    tensors.emplace_back(to_hf_name(item.key()), value.detach().to(at::kCPU, dtype).contiguous());
  }

  nlohmann::json config = model.hf_config();
  config["model_type"] = model_type();
  config["torch_dtype"] = hf_dtype_name(dtype);
  config["dtype"] = hf_dtype_name(dtype);
  nlohmann::json generation = {{"_from_model_config", true}};
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"}) {
    if (config.contains(key) && !config[key].is_null()) generation[key] = config[key];
  }
  safetensors::require_finite(dir, tensors);
  safetensors::save_checkpoint(dir, tensors, options.max_shard_bytes);
  write_text_atomically(dir / "generation_config.json", generation.dump(2) + "\n");
  write_text_atomically(dir / "config.json", config.dump(2) + "\n");
}

std::shared_ptr<CausalLM> ModelFamily::build_for_checkpoint(const fs::path& dir, const ModelOptions& options) const {
  auto config = read_hf_config(dir);
  const auto type = config.value("model_type", std::string());
  if (type != model_type()) {
    throw CheckpointError((dir / "config.json").string() + ": model_type '" + type + "' is not handled by the '" +
                          model_type() + "' model plugin");
  }
  try {
    SkipWeightInit every_weight_comes_from_the_checkpoint;
    // Allocate in the target dtype from the start: no f32 copy of the model to convert (and page in) first.
    const auto previous_default = c10::get_default_dtype();
    if (at::isFloatingType(options.dtype)) c10::set_default_dtype(c10::scalarTypeToTypeMeta(options.dtype));
    try {
      auto model = build(config, options);
      c10::set_default_dtype(previous_default);
      return model;
    } catch (...) {
      c10::set_default_dtype(previous_default);
      throw;
    }
  } catch (const std::exception& e) {
    throw CheckpointError((dir / "config.json").string() + ": " + e.what());
  }
}

std::shared_ptr<CausalLM> ModelFamily::from_pretrained(const fs::path& dir, const ModelOptions& options) const {
  auto model = build_for_checkpoint(dir, options);
  load_state(*model, safetensors::CheckpointReader::open(dir));
  return model;
}

void ModelFamily::check_pretrained(const fs::path& dir, const ModelOptions& options) const {
  // The weights are allocated but never written, so no page of them is touched.
  check_state(*build_for_checkpoint(dir, options), safetensors::CheckpointReader::open(dir));
}

}  // namespace dschat
