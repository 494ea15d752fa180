// dschat::skinny_linear (the decode-step kernel) against at::linear over shapes that are and are not multiples
// of the vector width, fp32 and bf16, with and without bias; and fast_linear's dispatch: the kernel only for a
// few rows without autograd, at::linear (with its backward) everywhere else.
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/nn/onednn_linear.h"
#include "dschat/sdk/nn/skinny_linear.h"

using namespace dschat;

namespace {

// The fp32 result of the same (rounded) inputs, accumulated in double: the reference both kernels approximate.
at::Tensor reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  auto y = at::linear(x.to(at::kDouble), w.to(at::kDouble), b.defined() ? b.to(at::kDouble) : b);
  return y;
}

// Every loop this CPU can run (scalar, AVX2, AVX-512F, AVX-512-BF16), not only the one skinny_linear picks.
std::vector<SkinnyIsa> isas() {
  std::vector<SkinnyIsa> out;
  for (auto isa : {SkinnyIsa::kScalar, SkinnyIsa::kAvx2, SkinnyIsa::kAvx512, SkinnyIsa::kAvx512Bf16})
    if (skinny_isa_supported(isa)) out.push_back(isa);
  return out;
}

void check(SkinnyIsa isa, const std::vector<int64_t>& lead, int64_t N, int64_t K, at::ScalarType dtype,
           bool with_bias) {
  SCOPED_TRACE(std::string(skinny_isa_name(isa)) + " lead " + std::to_string(lead.size()) + " N " +
               std::to_string(N) + " K " + std::to_string(K) + (dtype == at::kFloat ? " fp32" : " bf16") +
               (with_bias ? " bias" : ""));
  auto x_sizes = lead;
  x_sizes.push_back(K);
  auto x = at::randn(x_sizes).to(dtype);
  auto w = at::randn({N, K}).to(dtype);
  auto b = with_bias ? at::randn({N}).to(dtype) : at::Tensor();
  at::NoGradGuard no_grad;
  auto ours = skinny_linear(isa, x, w, b);
  auto theirs = at::linear(x, w, b);
  ASSERT_EQ(ours.sizes(), theirs.sizes());
  ASSERT_EQ(ours.scalar_type(), dtype);
  auto ref = reference(x, w, b);
  // Magnitude of the terms summed: |x| |w| summed over K (plus |b|), the scale of reassociation error.
  auto scale = at::linear(x.to(at::kDouble).abs(), w.to(at::kDouble).abs(),
                          with_bias ? b.to(at::kDouble).abs() : at::Tensor());
  auto err = (ours.to(at::kDouble) - ref).abs();
  if (dtype == at::kFloat) {
    // fp32 accumulation in another order: a few float epsilons of the summed magnitude.
    EXPECT_LE((err / (scale + 1e-30)).max().item<double>(), 1e-5);
    EXPECT_LE((ours - theirs).abs().max().item<double>(), 1e-4 * std::max(1.0, ref.abs().max().item<double>()));
  } else {
    // Output rounded to bf16 once: within half a bf16 ulp of the exact value (8-bit significand: 2^-8
    // relative), plus the fp32 accumulation error.
    EXPECT_LE((err - ref.abs() * (1.0 / 256) - scale * 1e-5).max().item<double>(), 0.0);
    auto diff = (ours.to(at::kDouble) - theirs.to(at::kDouble)).abs();  // at::linear: also one rounding
    EXPECT_LE((diff - ref.abs() * (1.0 / 128) - scale * 1e-5).max().item<double>(), 0.0);
  }
}

}  // namespace

TEST(SkinnyLinear, MatchesLinearFp32AndBf16) {
  at::manual_seed(0);
  ASSERT_TRUE(skinny_isa_supported(skinny_best_isa()));
  for (auto isa : isas()) {
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      for (bool bias : {false, true}) {
        for (int64_t M = 1; M <= 8; ++M) check(isa, {M}, 1 + 37 * M, 5 + 97 * M, dtype, bias);  // N, K odd
        check(isa, {1}, 1, 1, dtype, bias);
        check(isa, {3}, 8, 16, dtype, bias);       // exact AVX2 vector multiples
        check(isa, {5}, 40, 64, dtype, bias);      // exact AVX-512 multiples (32 bf16 pairs)
        check(isa, {2}, 9, 33, dtype, bias);       // one past a 32-wide block: a 1-element masked tail
        check(isa, {2, 3}, 1001, 771, dtype, bias);  // leading dims: 6 rows
        check(isa, {4, 1}, 50, 3075, dtype, bias);   // long rows, x beyond L1
        check(isa, {12}, 257, 100, dtype, bias);     // past 8 rows: passes over tiles of W
        check(isa, {17}, 2000, 129, dtype, bias);
      }
    }
  }
}

TEST(SkinnyLinear, RefusesALoopTheCpuLacks) {
  for (auto isa : {SkinnyIsa::kAvx2, SkinnyIsa::kAvx512, SkinnyIsa::kAvx512Bf16}) {
    if (skinny_isa_supported(isa)) continue;
    EXPECT_THROW(skinny_linear(isa, at::randn({1, 8}), at::randn({4, 8})), c10::Error) << skinny_isa_name(isa);
  }
}

TEST(SkinnyLinear, SameResultWithAnyThreadCount) {
  at::manual_seed(1);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    auto x = at::randn({5, 333}).to(dtype), w = at::randn({4099, 333}).to(dtype), b = at::randn({4099}).to(dtype);
    const int before = at::get_num_threads();
    at::set_num_threads(1);
    auto one = skinny_linear(x, w, b);
    at::set_num_threads(std::max(2, before));
    auto many = skinny_linear(x, w, b);
    at::set_num_threads(before);
    EXPECT_TRUE(at::equal(one, many));  // rows of W are independent: the split cannot change a sum
  }
}

TEST(SkinnyLinear, StridedInput) {
  at::manual_seed(2);
  auto x = at::randn({3, 40}).narrow(1, 3, 33), w = at::randn({70, 33});
  EXPECT_TRUE(at::allclose(skinny_linear(x, w), at::linear(x, w), 1e-5, 1e-5));
}

TEST(SkinnyLinear, RejectsWhatItCannotRun) {
  auto w = at::randn({16, 8});
  EXPECT_THROW(skinny_linear(at::randn({2, 8}).to(at::kDouble), w.to(at::kDouble)), c10::Error);
  EXPECT_THROW(skinny_linear(at::randn({2, 8}).to(at::kBFloat16), w), c10::Error);
  EXPECT_THROW(skinny_linear(at::randn({2, 7}), w), c10::Error);
  EXPECT_THROW(skinny_linear(at::randn({2, 16}), w.t()), c10::Error);  // not contiguous
  EXPECT_THROW(skinny_linear(at::randn({2, 8}), w, at::randn({15})), c10::Error);
}

TEST(SkinnyLinear, DispatchOnlyWithoutAutogradAndFewRows) {
  auto w = at::randn({64, 32}), x = at::randn({4, 32});
  {
    at::NoGradGuard no_grad;
    if (!use_skinny_linear(x, w)) GTEST_SKIP() << "no AVX2+FMA: fast_linear always keeps at::linear";
    const int64_t max_rows = skinny_linear_max_rows(at::kFloat);
    EXPECT_FALSE(use_skinny_linear(at::randn({max_rows + 1, 32}), w));  // prefill / training batches
    EXPECT_FALSE(use_skinny_linear(x, w.t().contiguous().t()));         // strided weight
    EXPECT_FALSE(use_skinny_linear(x.to(at::kDouble), w.to(at::kDouble)));
    EXPECT_FALSE(use_skinny_linear(x.to(at::kHalf), w.to(at::kHalf)));
    EXPECT_FALSE(use_skinny_linear(x, w.to(at::kBFloat16)));
    // bf16: only where LibTorch's bf16 GEMM is its generic fallback (no oneDNN bf16 kernels on this CPU).
    EXPECT_EQ(use_skinny_linear(x.to(at::kBFloat16), w.to(at::kBFloat16)),
              skinny_linear_max_rows(at::kBFloat16) >= 4);
    EXPECT_TRUE(use_skinny_linear(x, w.clone().requires_grad_(true)));  // grad mode off: nothing recorded
  }
  // Grad mode on: the kernel only where no input needs a gradient.
  EXPECT_TRUE(use_skinny_linear(x, w));
  auto wg = w.clone().requires_grad_(true);
  EXPECT_FALSE(use_skinny_linear(x, wg));
  EXPECT_FALSE(use_skinny_linear(x.clone().requires_grad_(true), w));
  EXPECT_FALSE(use_skinny_linear(x, w, at::zeros({64}).requires_grad_(true)));
  // ...and then fast_linear is at::linear, backward included.
  auto y = fast_linear(x, wg);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_TRUE(at::allclose(wg.grad(), x.sum(0).expand({64, 32})));
}

// Where LibTorch's bf16 GEMM is the generic fallback, bf16 linears run as fp32 GEMMs on upcast operands: the
// bf16 GEMM's result (exact products, fp32 sums) rounded once, whatever the row count, and the same for the
// backward's gradients.
TEST(SkinnyLinear, Bf16UpcastGemm) {
  at::manual_seed(5);
  auto w = at::randn({96, 80}).to(at::kBFloat16), b = at::randn({96}).to(at::kBFloat16);
  auto x = at::randn({3, 40, 80}).to(at::kBFloat16);  // 120 rows: past the decode kernel
  if (!use_upcast_linear(x, w, b)) GTEST_SKIP() << "this CPU has oneDNN's bf16 GEMM: bf16 stays on at::linear";
  EXPECT_FALSE(use_upcast_linear(x.to(at::kFloat), w.to(at::kFloat), b.to(at::kFloat)));
  // Within half a bf16 ulp (2^-8 relative) of the exact value, plus fp32 summation error.
  auto close = [](const at::Tensor& got, const at::Tensor& exact) {
    EXPECT_EQ(got.scalar_type(), at::kBFloat16);
    EXPECT_EQ(got.sizes(), exact.sizes());
    auto err = (got.to(at::kDouble) - exact).abs();
    EXPECT_TRUE((err <= exact.abs() * (1.0 / 256) + 1e-4).all().item<bool>()) << err.max().item<double>();
  };
  auto xd = x.to(at::kDouble).requires_grad_(true), wd = w.to(at::kDouble).requires_grad_(true);
  auto bd = b.to(at::kDouble).requires_grad_(true);
  auto exact = at::linear(xd, wd, bd);
  auto upstream = at::randn(exact.sizes()).to(at::kBFloat16);
  exact.backward(upstream.to(at::kDouble));
  {
    at::NoGradGuard no_grad;
    close(fast_linear(x, w, b), exact.detach());
  }
  auto xg = x.clone().requires_grad_(true), wg = w.clone().requires_grad_(true), bg = b.clone().requires_grad_(true);
  auto y = fast_linear(xg, wg, bg);
  close(y.detach(), exact.detach());
  y.backward(upstream);
  close(xg.grad(), xd.grad());
  close(wg.grad(), wd.grad());
  close(bg.grad(), bd.grad());

  // No bias (a tied LM head), gradient for the weight only.
  auto wd2 = w.to(at::kDouble).requires_grad_(true), wg2 = w.clone().requires_grad_(true);
  auto exact2 = at::linear(x.to(at::kDouble), wd2);
  exact2.backward(upstream.to(at::kDouble));
  auto y2 = fast_linear(x, wg2);
  close(y2.detach(), exact2.detach());
  y2.backward(upstream);
  close(wg2.grad(), wd2.grad());
}

TEST(SkinnyLinear, LoraLinearForward) {
  at::manual_seed(3);
  LoraLinear layer(48, 300);
  layer->bias.data().normal_();
  LoraOptions options;
  options.rank = 4;
  layer->enable_lora(options);
  layer->lora_left.data().normal_();  // a non-zero adapter, unfused: its term is added after the kernel
  auto x = at::randn({2, 1, 48});
  auto expected = at::linear(x, layer->weight, layer->bias) +
                  at::matmul(at::matmul(x, layer->lora_right), layer->lora_left) * layer->lora_scale();
  at::Tensor decoded;
  {
    at::NoGradGuard no_grad;
    decoded = layer->forward(x);
  }
  EXPECT_FALSE(decoded.requires_grad());
  EXPECT_TRUE(at::allclose(decoded, expected, 1e-4, 1e-4));
  auto trained = layer->forward(x);  // grad mode: at::linear, differentiable
  ASSERT_TRUE(trained.requires_grad());
  EXPECT_TRUE(at::allclose(trained, expected, 1e-4, 1e-4));
}

// oneDNN's fp32 linear (what fast_linear runs on AMD CPUs with AVX-512) equals at::linear within fp32 summation
// order, forward and every gradient, on 3-D, strided and bias-less inputs; fast_linear takes it exactly where
// the backend says so.
TEST(OnednnLinear, MatchesAtLinearForwardAndBackward) {
  at::manual_seed(5);
  for (const bool with_bias : {true, false}) {
    auto x0 = at::randn({3, 40, 96});
    auto w0 = at::randn({72, 96}) * 0.1;
    auto b0 = with_bias ? at::randn({72}) : at::Tensor();
    auto x1 = x0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
    auto x2 = x0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
    auto b1 = with_bias ? b0.clone().requires_grad_() : at::Tensor();
    auto b2 = with_bias ? b0.clone().requires_grad_() : at::Tensor();
    auto grad = at::randn({3, 40, 72});
    auto y1 = dschat::onednn_linear(x1, w1, b1);
    auto y2 = at::linear(x2, w2, b2);
    ASSERT_EQ(y1.sizes(), y2.sizes());
    EXPECT_TRUE(at::allclose(y1, y2, 1e-5, 1e-5)) << (y1 - y2).abs().max().item<float>();
    y1.backward(grad);
    y2.backward(grad);
    EXPECT_TRUE(at::allclose(x1.grad(), x2.grad(), 1e-5, 1e-5));
    EXPECT_TRUE(at::allclose(w1.grad(), w2.grad(), 1e-4, 1e-5)) << (w1.grad() - w2.grad()).abs().max().item<float>();
    if (with_bias) EXPECT_TRUE(at::allclose(b1.grad(), b2.grad(), 1e-4, 1e-5));
  }
  // A strided input (a column slice) without grad.
  auto wide = at::randn({50, 200});
  auto w = at::randn({30, 96});
  auto x = wide.slice(1, 10, 106);
  EXPECT_TRUE(at::allclose(dschat::onednn_linear(x, w), at::linear(x, w), 1e-5, 1e-5));

  const std::string backend = dschat::cpu_gemm_backend();
  EXPECT_TRUE(backend == "onednn" || backend == "mkl") << backend;
  EXPECT_EQ(dschat::use_onednn_linear(at::randn({64, 96}), w), backend == "onednn");
  EXPECT_FALSE(dschat::use_onednn_linear(at::randn({64, 96}).to(at::kBFloat16), w.to(at::kBFloat16)));
}
