// Rotary embeddings and ALiBi. Every formula follows transformers' code operation by operation (in float32), so
// the tables match bit for bit or to the last ulp.
#include <cmath>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "dschat/sdk/nn/alibi.h"
#include "dschat/sdk/nn/decode_ops.h"
#include "dschat/sdk/nn/rotary.h"

namespace dschat {

namespace {
template <class... Parts>
void check(bool condition, const Parts&... parts) {
  if (condition) return;
  std::ostringstream out;
  (out << ... << parts);
  throw std::runtime_error(out.str());
}

double number_or(const nlohmann::json& object, const char* key, double fallback) {
  if (!object.contains(key) || object[key].is_null()) return fallback;
  check(object[key].is_number(), "config.json: rope parameter '", key, "' must be a number, got ",
              object[key].dump());
  return object[key].get<double>();
}
}  // namespace

RopeConfig RopeConfig::from_hf(const nlohmann::json& config, int64_t head_dim) {
  RopeConfig rope;
  rope.head_dim = head_dim;
  rope.max_position_embeddings = config.value("max_position_embeddings", int64_t{2048});
  rope.theta = number_or(config, "rope_theta", 10000.0);
  // transformers 5 writes rope_parameters (with rope_theta inside); 4.x writes rope_scaling next to rope_theta.
  nlohmann::json params = nlohmann::json::object();
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (config.contains(key) && !config[key].is_null()) {
      check(config[key].is_object(), "config.json: '", key, "' must be an object, got ", config[key].dump());
      params = config[key];
      break;
    }
  }
  rope.theta = number_or(params, "rope_theta", rope.theta);
  if (params.contains("rope_type")) rope.type = params["rope_type"].get<std::string>();
  else if (params.contains("type")) rope.type = params["type"].get<std::string>();
  if (rope.type == "default") return rope;
  check(rope.type == "linear" || rope.type == "dynamic" || rope.type == "llama3",
              "config.json: unsupported rope type '", rope.type, "' (supported: default, linear, dynamic, llama3)");
  check(params.contains("factor"), "config.json: rope type '", rope.type, "' needs a 'factor'");
  rope.factor = number_or(params, "factor", 1.0);
  if (rope.type == "llama3") {
    for (const char* key : {"low_freq_factor", "high_freq_factor"}) {
      check(params.contains(key), "config.json: rope type 'llama3' needs '", key, "'");
    }
    rope.low_freq_factor = number_or(params, "low_freq_factor", 1.0);
    rope.high_freq_factor = number_or(params, "high_freq_factor", 4.0);
    rope.original_max_position_embeddings = static_cast<int64_t>(
        number_or(params, "original_max_position_embeddings", static_cast<double>(rope.max_position_embeddings)));
  }
  return rope;
}

at::Tensor rope_inv_freq(const RopeConfig& config, int64_t seq_len) {
  const int64_t dim = config.head_dim;
  TORCH_CHECK(dim > 0 && dim % 2 == 0, "rotary head_dim must be even and positive, got ", dim);
  double base = config.theta;
  if (config.type == "dynamic" && seq_len > config.max_position_embeddings) {
    base = base * std::pow(config.factor * static_cast<double>(seq_len) / config.max_position_embeddings -
                               (config.factor - 1),
                           static_cast<double>(dim) / (dim - 2));
  }
  auto exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / dim;
  auto inv_freq = 1.0 / at::pow(base, exponents);
  if (config.type == "linear") inv_freq = inv_freq / config.factor;
  if (config.type == "llama3") {
    const double old_context = static_cast<double>(config.original_max_position_embeddings);
    const double low_freq_wavelen = old_context / config.low_freq_factor;
    const double high_freq_wavelen = old_context / config.high_freq_factor;
    auto wavelen = 2 * M_PI / inv_freq;
    auto scaled = at::where(wavelen > low_freq_wavelen, inv_freq / config.factor, inv_freq);
    auto smooth = (old_context / wavelen - config.low_freq_factor) / (config.high_freq_factor - config.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / config.factor + smooth * scaled;
    auto medium = (wavelen < high_freq_wavelen).logical_not() & (wavelen > low_freq_wavelen).logical_not();
    inv_freq = at::where(medium, smoothed, scaled);
  }
  return inv_freq;
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const RopeConfig& config, const at::Tensor& position_ids,
                                               at::ScalarType dtype) {
  int64_t seq_len = 0;
  if (config.type == "dynamic") seq_len = position_ids.max().item<int64_t>() + 1;
  auto inv_freq = rope_inv_freq(config, seq_len).to(position_ids.device());
  auto freqs = position_ids.unsqueeze(-1).to(at::kFloat) * inv_freq;  // [B, T, D/2]
  auto emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rotary = cos.size(-1), features = x.size(-1);
  TORCH_CHECK(rotary <= features && rotary % 2 == 0, "rotary tables of width ", rotary, " for heads of ", features,
              " features");
  if (rotary < features) {  // partial rotary (GPT-NeoX, Phi): the first `rotary` features turn, the rest pass
    return at::cat({apply_rotary(x.narrow(-1, 0, rotary), cos, sin), x.narrow(-1, rotary, features - rotary)}, -1);
  }
  if (auto fused = rotary_decode(x, cos, sin); fused.defined()) return fused;  // a decode step: one pass
  const int64_t half = x.size(-1) / 2;
  auto rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

at::Tensor alibi_slopes(int64_t num_heads) {
  TORCH_CHECK(num_heads > 0, "ALiBi needs a positive head count, got ", num_heads);
  const int64_t closest = int64_t{1} << static_cast<int>(std::floor(std::log2(static_cast<double>(num_heads))));
  auto slopes_for = [](int64_t n) {
    return std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(n)) - 3)));
  };
  auto base = at::full({}, slopes_for(closest), at::kFloat);
  auto slopes = at::pow(base, at::arange(1, 1 + closest, at::kInt));
  if (closest != num_heads) {
    auto extra_base = at::full({}, slopes_for(2 * closest), at::kFloat);
    const int64_t remaining = std::min(closest, num_heads - closest);
    slopes = at::cat({slopes, at::pow(extra_base, at::arange(1, 1 + 2 * remaining, 2, at::kInt))});
  }
  return slopes;
}

at::Tensor alibi_bias(const at::Tensor& attention_mask, int64_t num_heads, at::ScalarType dtype) {
  auto mask = attention_mask.to(at::kLong);
  auto positions = ((mask.cumsum(-1) - 1) * mask).unsqueeze(1);                     // [B, 1, S]
  auto slopes = alibi_slopes(num_heads).to(attention_mask.device()).unsqueeze(-1);  // [H, 1]
  return (slopes * positions).unsqueeze(2).to(dtype);                               // [B, H, 1, S]
}

}  // namespace dschat
