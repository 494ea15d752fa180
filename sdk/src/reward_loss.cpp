#include "dschat/sdk/reward_loss.h"

#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ops/log_sigmoid.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

namespace dschat {

namespace {
// Index of the n-th (0-based) occurrence of pad in row, or row.size() when there are fewer.
int64_t nth_pad(const int64_t* row, int64_t length, int64_t pad_id, int64_t n) {
  int64_t seen = 0;
  for (int64_t t = 0; t < length; ++t) {
    if (row[t] == pad_id && seen++ == n) return t;
  }
  return length;
}
}  // namespace

PairLossOutput reward_pair_loss(const at::Tensor& values, const at::Tensor& input_ids, int64_t pad_id,
                                int64_t num_padding_at_beginning) {
  TORCH_CHECK(values.dim() == 2 && input_ids.dim() == 2 && values.sizes() == input_ids.sizes(),
              "reward_pair_loss: values ", values.sizes(), " and input_ids ", input_ids.sizes(),
              " must both be [2B, T]");
  TORCH_CHECK(values.size(0) % 2 == 0 && values.size(0) > 0, "reward_pair_loss: need chosen and rejected halves, got ",
              values.size(0), " rows");
  TORCH_CHECK(num_padding_at_beginning >= 0, "num_padding_at_beginning must be >= 0");
  const int64_t pairs = values.size(0) / 2, T = values.size(1);
  at::Tensor ids = input_ids.to(at::kCPU, at::kLong).contiguous();
  at::Tensor v = values.to(at::kFloat);
  const int64_t* data = ids.data_ptr<int64_t>();

  at::Tensor loss = at::zeros({}, v.options());
  std::vector<at::Tensor> chosen_scores, rejected_scores;
  for (int64_t i = 0; i < pairs; ++i) {
    const int64_t* c = data + i * T;
    const int64_t* r = data + (pairs + i) * T;
    const int64_t c_ind = nth_pad(c, T, pad_id, num_padding_at_beginning);
    int64_t divergence = -1;
    for (int64_t t = 0; t < T && divergence < 0; ++t)
      if (c[t] != r[t]) divergence = t;
    int64_t r_ind, end_ind;
    if (divergence < 0) {  // identical rows: last token only
      end_ind = T;
      divergence = T - 1;
      r_ind = c_ind;
    } else {
      r_ind = nth_pad(r, T, pad_id, num_padding_at_beginning);
      end_ind = std::max(c_ind, r_ind);
    }
    if (divergence <= 0)
      throw std::invalid_argument("reward_pair_loss: pair " + std::to_string(i) +
                                  " differs at token 0 (DeepSpeed-Chat asserts divergence_ind > 0: chosen and "
                                  "rejected must share a prompt)");
    if (c_ind == 0 || r_ind == 0)
      throw std::invalid_argument("reward_pair_loss: pair " + std::to_string(i) +
                                  " starts with a pad token; set num_padding_at_beginning to the number of pad-equal "
                                  "tokens the tokenizer puts first (1 for OPT)");
    at::Tensor vc = v[i], vr = v[pairs + i];
    auto span_c = vc.slice(0, divergence, end_ind), span_r = vr.slice(0, divergence, end_ind);
    loss = loss - at::log_sigmoid(span_c - span_r).mean();
    chosen_scores.push_back(vc[c_ind - 1]);
    rejected_scores.push_back(vr[r_ind - 1]);
  }
  return {loss / static_cast<double>(pairs), at::stack(chosen_scores), at::stack(rejected_scores)};
}

at::Tensor end_scores(const at::Tensor& values, const at::Tensor& input_ids, int64_t pad_id, int64_t prompt_length) {
  TORCH_CHECK(values.dim() == 2 && values.sizes() == input_ids.sizes(), "end_scores: values ", values.sizes(),
              " and input_ids ", input_ids.sizes(), " must both be [B, T]");
  const int64_t B = values.size(0), T = values.size(1);
  TORCH_CHECK(prompt_length >= 0 && prompt_length < T, "end_scores: prompt_length ", prompt_length,
              " outside [0, ", T, ")");
  at::Tensor ids = input_ids.to(at::kCPU, at::kLong).contiguous();
  const int64_t* data = ids.data_ptr<int64_t>();
  std::vector<at::Tensor> scores;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = data + b * T;
    int64_t c_ind = T;
    for (int64_t t = prompt_length; t < T; ++t)
      if (row[t] == pad_id) {
        c_ind = t;
        break;
      }
    scores.push_back(values[b][std::max<int64_t>(c_ind - 1, 0)]);
  }
  return at::stack(scores);
}

}  // namespace dschat
