// dschat::decode_attention (one query per sequence over its KV cache) against LibTorch's
// scaled_dot_product_attention in float64: grouped-query and plain heads, a padding mask, a per-head (ALiBi-like)
// bias, a narrowed (strided) cache, head sizes that are and are not vector multiples, fp32 and bf16; and where
// attend() may take it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "dschat/sdk/nn/attention.h"
#include "dschat/sdk/nn/decode_attention.h"
#include "dschat/sdk/nn/decode_ops.h"

using namespace dschat;

namespace {

struct Case {
  int64_t batch, heads, kv_heads, cached, capacity, head_dim;
  bool per_head_bias;
};

void check(const Case& c, at::ScalarType dtype) {
  SCOPED_TRACE("B " + std::to_string(c.batch) + " H " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
               " S " + std::to_string(c.cached) + " D " + std::to_string(c.head_dim) +
               (dtype == at::kFloat ? " fp32" : " bf16"));
  auto q = at::randn({c.batch, c.heads, 1, c.head_dim}).to(dtype);
  // A cache preallocated for `capacity` positions, of which `cached` are filled: the narrowed view attend() uses.
  auto key_cache = at::randn({c.batch, c.kv_heads, c.capacity, c.head_dim}).to(dtype);
  auto value_cache = at::randn({c.batch, c.kv_heads, c.capacity, c.head_dim}).to(dtype);
  auto keys = key_cache.narrow(2, 0, c.cached), values = value_cache.narrow(2, 0, c.cached);
  // Left padding: row b masks its first b positions (the lowest finite value, as causal_padding_bias writes).
  auto bias = at::zeros({c.batch, c.per_head_bias ? c.heads : 1, 1, c.cached});
  if (c.per_head_bias) bias.normal_();
  for (int64_t b = 0; b < c.batch; ++b)
    bias[b].narrow(-1, 0, std::min(b, c.cached - 1)).fill_(lowest_value(at::kFloat));
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  at::NoGradGuard no_grad;
  // The kernel runs on every CPU (scalar loops without AVX-512); where attend() uses it is checked below.
  auto ours = decode_attention(q, keys, values, bias.to(dtype), scale);
  ASSERT_EQ(ours.sizes(), q.sizes());
  ASSERT_EQ(ours.scalar_type(), dtype);
  const bool grouped = c.heads != c.kv_heads;
  auto exact = at::scaled_dot_product_attention(q.to(at::kDouble), keys.to(at::kDouble), values.to(at::kDouble),
                                                bias.to(dtype).to(at::kDouble), 0.0, false, scale, grouped);
  const double err = (ours.to(at::kDouble) - exact).abs().max().item<double>();
  // fp32: reassociated sums; bf16: the output rounded once (values are O(1): half an ulp is 2^-8 of 2).
  EXPECT_LE(err, dtype == at::kFloat ? 1e-5 : 1.0 / 64) << "max |error| " << err;
  // A bias in fp32 under bf16 q (read as fp32) gives what the bias rounded to bf16 gives where it is exact.
  if (dtype == at::kBFloat16) {
    auto with_fp32_bias = decode_attention(q, keys, values, bias.to(dtype).to(at::kFloat), scale);
    EXPECT_TRUE(at::equal(with_fp32_bias, ours));
  }
}

}  // namespace

TEST(DecodeAttention, MatchesSdpaFp32AndBf16) {
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    check({8, 9, 3, 104, 168, 64, false}, dtype);  // SmolLM2: GQA 9:3, head 64, a part-filled cache
    check({2, 12, 12, 37, 37, 64, false}, dtype);  // OPT: one kv head per head, a full cache
    check({3, 4, 2, 5, 9, 48, true}, dtype);       // head 48: a masked tail; per-head bias (BLOOM's ALiBi)
    check({1, 2, 1, 1, 4, 7, false}, dtype);       // one cached key, a tiny odd head
  }
}

TEST(DecodeAttention, RefusesMismatchedInputs) {
  auto q = at::randn({2, 4, 1, 16}), k = at::randn({2, 2, 5, 16}), bias = at::zeros({2, 1, 1, 5});
  EXPECT_THROW(decode_attention(at::randn({2, 4, 2, 16}), k, k, bias, 1.0), c10::Error);  // two query positions
  EXPECT_THROW(decode_attention(at::randn({2, 3, 1, 16}), k, k, bias, 1.0), c10::Error);  // 3 heads over 2
  EXPECT_THROW(decode_attention(q, k, k, at::zeros({2, 1, 1, 4}), 1.0), c10::Error);      // bias too short
  EXPECT_THROW(decode_attention(q, k.to(at::kDouble), k, bias, 1.0), c10::Error);
  EXPECT_THROW(decode_attention(q, k.transpose(2, 3).contiguous().transpose(2, 3), k, bias, 1.0), c10::Error);
}

TEST(DecodeAttention, AttendTakesItOnlyForADecodeStepWithoutAutograd) {
  auto q = at::randn({2, 4, 1, 16}), k = at::randn({2, 2, 5, 16}), bias = at::zeros({2, 1, 1, 5});
  if (!use_decode_attention(q, k, k, bias)) GTEST_SKIP() << "no AVX-512: attend() keeps SDPA for decode steps";
  EXPECT_FALSE(use_decode_attention(at::randn({2, 4, 3, 16}), k, k, at::zeros({2, 1, 3, 5})));  // prefill
  EXPECT_FALSE(use_decode_attention(q.to(at::kHalf), k.to(at::kHalf), k.to(at::kHalf), bias));
  EXPECT_FALSE(use_decode_attention(q.clone().requires_grad_(true), k, k, bias));  // training keeps SDPA
  // attend() on a real layer: the same result through decode_attention as through SDPA within fp32 rounding.
  AttentionInputs inputs;
  inputs.bias = bias;
  at::NoGradGuard no_grad;
  auto via_attend = attend(q, k, k, inputs, nullptr, 0.25, 0.0, false);
  auto via_sdpa = at::scaled_dot_product_attention(q, k, k, bias, 0.0, false, 0.25, true);
  EXPECT_TRUE(at::allclose(via_attend, via_sdpa.transpose(1, 2).reshape({2, 1, 64}), 1e-5, 1e-5));
}

// The one-pass RMSNorm and rotary of a decode step against the op chains they replace (HF's formulas).
TEST(DecodeOps, RmsNormAndRotaryEqualTheOpChains) {
  at::manual_seed(4);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(dtype == at::kFloat ? "fp32" : "bf16");
    auto x = at::randn({8, 1, 576}).to(dtype), w = (1 + 0.1 * at::randn({576})).to(dtype);
    at::NoGradGuard no_grad;
    auto fused = rms_norm_decode(x, w, 1e-5);
    if (!fused.defined()) GTEST_SKIP() << "no AVX-512-BF16: the op chains run";
    auto x32 = x.to(at::kFloat);
    auto chain = w * (x32 * at::rsqrt(x32.pow(2).mean(-1, true) + 1e-5)).to(dtype);
    // Equal but for the order of one fp32 sum of squares: at most one ulp of the output's dtype.
    const double ulp = dtype == at::kFloat ? 1e-6 : 1.0 / 128;
    EXPECT_LE(((fused - chain).abs() / (chain.abs() + 1e-30)).to(at::kFloat).max().item<double>(), ulp);
    if (dtype == at::kBFloat16) EXPECT_GE(fused.eq(chain).to(at::kFloat).mean().item<double>(), 0.99);

    auto q = at::randn({8, 1, 9, 64}).to(dtype).transpose(1, 2);  // [B, H, T, D] as a strided view
    auto angles = at::randn({8, 1, 64});
    auto cos = angles.cos().to(dtype), sin = angles.sin().to(dtype);
    auto rotated = rotary_decode(q, cos, sin);
    ASSERT_TRUE(rotated.defined());
    auto half = at::cat({-q.narrow(-1, 32, 32), q.narrow(-1, 0, 32)}, -1);
    auto expected = q * cos.unsqueeze(1) + half * sin.unsqueeze(1);
    EXPECT_TRUE(at::equal(rotated, expected))  // no sums: every rounding is the chain's
        << (rotated.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>();
    // Where it does not apply, it says so: training (autograd), an odd head size.
    at::GradMode::set_enabled(true);
    EXPECT_FALSE(rms_norm_decode(x.clone().requires_grad_(true), w, 1e-5).defined());
    at::GradMode::set_enabled(false);
    EXPECT_FALSE(rotary_decode(at::randn({1, 2, 1, 48}).to(dtype), cos.narrow(-1, 0, 48).narrow(0, 0, 1),
                               sin.narrow(-1, 0, 48).narrow(0, 0, 1)).defined());
  }
}

// SwiGLU's product and the greedy pick against the ATen ops they replace.
TEST(DecodeOps, SiluMulEqualsTheOpChain) {
  at::manual_seed(5);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(dtype == at::kFloat ? "fp32" : "bf16");
    // Gates from deep negatives (exp overflows) through large positives (SiLU ~ identity).
    auto gate = (at::randn({8, 1, 1536}) * 6).to(dtype), up = at::randn({8, 1, 1536}).to(dtype);
    gate.view(-1)[0] = -100.0;
    gate.view(-1)[1] = 90.0;
    at::NoGradGuard no_grad;
    auto fused = silu_mul_decode(gate, up);
    if (!fused.defined()) GTEST_SKIP() << "no AVX-512-BF16: the op chain runs";
    auto chain = at::silu(gate) * up;
    // Equal but for exp's last fp32 bit, which moves a bf16 rounding only at a tie: nearly all equal.
    const double ulp = dtype == at::kFloat ? 4e-7 : 1.0 / 128;
    EXPECT_LE(((fused - chain).abs() / (chain.abs() + 1e-30)).to(at::kFloat).max().item<double>(), ulp);
    EXPECT_GE(fused.eq(chain).to(at::kFloat).mean().item<double>(), dtype == at::kFloat ? 0.9 : 0.99);
    EXPECT_FALSE(silu_mul_decode(gate, up.narrow(-1, 0, 768)).defined());  // shapes differ
  }
}

TEST(DecodeOps, GreedyPickEqualsArgmaxAndLogSoftmax) {
  at::manual_seed(6);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(dtype == at::kFloat ? "fp32" : "bf16");
    // A vocabulary that is not a multiple of 16, and a strided view of rows (the last position of [B, T, V]).
    auto logits = (at::randn({5, 3, 49157}) * 4).to(dtype).select(1, 2);
    logits[1][49156] = 100.0;                          // the max in the masked tail
    logits[2][7] = logits[2][4000] = logits[2][49000] = 50.0;  // ties: the first position wins
    logits[3].fill_(-1.0);                             // all equal
    at::NoGradGuard no_grad;
    auto [tokens, logprobs] = greedy_pick_decode(logits);
    if (!tokens.defined()) GTEST_SKIP() << "no AVX-512: ATen's ops run";
    auto raw = logits.to(at::kFloat);
    EXPECT_TRUE(at::equal(tokens, raw.argmax(-1)));
    EXPECT_EQ(tokens[2].item<int64_t>(), 7);
    auto expected = raw.gather(1, tokens.unsqueeze(1)).squeeze(1) - at::logsumexp(raw, {1});
    EXPECT_TRUE(at::allclose(logprobs, expected, 1e-5, 1e-5)) << logprobs << expected;
    auto with_nan = logits.clone();
    with_nan[4][3] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_FALSE(greedy_pick_decode(with_nan).first.defined());  // ATen's argmax picks the NaN: fall back
  }
}
