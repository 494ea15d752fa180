// cpu_adamw_step against LibTorch's torch::optim::AdamW run on identical copies, over sizes that are and are not
// multiples of the vector width, several steps with fresh gradients, with and without weight decay.
#include <cmath>
#include <cstdlib>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include "dschat/sdk/cpu_adam.h"
#include "test_support.h"

using namespace dschat;
using dschat::testing::error_of;

namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

void compare_with_torch(int64_t n, double weight_decay) {
  SCOPED_TRACE("numel " + std::to_string(n) + ", weight_decay " + std::to_string(weight_decay));
  const double lr = 1e-2;  // large enough that several steps move the params visibly
  at::manual_seed(n);
  at::Tensor ours = at::randn({n});
  at::Tensor theirs = ours.clone().requires_grad_(true);
  at::Tensor m = at::zeros({n}), v = at::zeros({n});
  torch::optim::AdamW reference(
      std::vector<at::Tensor>{theirs},
      torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).eps(1e-8).weight_decay(weight_decay));
  for (int64_t step = 1; step <= 5; ++step) {
    at::Tensor g = at::randn({n}) * (0.1 * step);  // grads change scale too, so the moments are not steady
    theirs.mutable_grad() = g.clone();
    reference.step();
    cpu_adamw_step(ours, g, m, v, {.lr = lr, .weight_decay = weight_decay, .step = step});
  }
  const auto& state =
      static_cast<const torch::optim::AdamWParamState&>(*reference.state().at(theirs.unsafeGetTensorImpl()));
  EXPECT_LE(max_abs_diff(ours, theirs.detach()), 1e-6);
  EXPECT_LE(max_abs_diff(m, state.exp_avg()), 1e-6);
  EXPECT_LE(max_abs_diff(v, state.exp_avg_sq()), 1e-6);
  EXPECT_GT(max_abs_diff(ours, theirs.detach().clone().normal_()), 0.1);  // sanity: the comparison can fail
}

struct Step {
  at::Tensor p = at::randn({1000}), g = at::randn({1000}), m = at::zeros({1000}), v = at::zeros({1000});
  AdamWHyper hyper{.lr = 1e-3, .step = 1};
  std::string error(at::Tensor* copy = nullptr) {
    return error_of([&] { cpu_adamw_step(p, g, m, v, hyper, copy); });
  }
};

// Runs the test body once per kernel this machine has: the AVX2 one (where supported) and the portable one.
class CpuAdam : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      setenv("DSCHAT_CPU_ADAM_PORTABLE", "1", 1);
    } else {
      unsetenv("DSCHAT_CPU_ADAM_PORTABLE");
      if (std::string(cpu_adam_kernel()) == "portable") GTEST_SKIP() << "no AVX2 kernel on this machine";
    }
    ASSERT_EQ(std::string(cpu_adam_kernel()), GetParam() ? "portable" : "avx2");
  }
  void TearDown() override { unsetenv("DSCHAT_CPU_ADAM_PORTABLE"); }
};

}  // namespace

INSTANTIATE_TEST_SUITE_P(Kernels, CpuAdam, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "portable" : "avx2"; });

TEST_P(CpuAdam, MatchesTorchAdamW) {
  for (int64_t n : {1, 7, 8, 1000, 65537, 1000003})
    for (double wd : {0.0, 0.1}) compare_with_torch(n, wd);
}

TEST_P(CpuAdam, ResultDoesNotDependOnTheThreadCount) {
  const int64_t n = 1000003;
  const at::Tensor p0 = at::randn({n}), g = at::randn({n});
  std::vector<at::Tensor> results;
  const int threads = at::get_num_threads();
  for (int t : {1, 3}) {
    at::set_num_threads(t);
    at::Tensor p = p0.clone(), m = at::zeros({n}), v = at::zeros({n});
    cpu_adamw_step(p, g, m, v, {.lr = 1e-2, .weight_decay = 0.1, .step = 1});
    results.push_back(p);
  }
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(results[0], results[1]));
}

TEST_P(CpuAdam, ModelCopyIsTheCastParam) {
  for (auto dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
    SCOPED_TRACE(c10::toString(dtype));
    const int64_t n = 100003;
    at::Tensor p = at::randn({n}), m = at::zeros({n}), v = at::zeros({n});
    at::Tensor copy = at::zeros({n}, dtype);
    for (int64_t step = 1; step <= 2; ++step)
      cpu_adamw_step(p, at::randn({n}), m, v, {.lr = 1e-2, .weight_decay = 0.1, .step = step}, &copy);
    EXPECT_TRUE(at::equal(copy, p.to(dtype)));
  }
  // Rounding ties, subnormals, infinities and NaN convert as Tensor::to does.
  for (auto dtype : {at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    at::Tensor p = at::tensor({1.00390625f, 1.01171875f, 1e-40f, -1e-40f, 70000.f, -0.f, 1e30f, 3.0f, 1.f, 2.f,
                               5.96e-8f, 1.f + 1.f / 2048, 1.f + 3.f / 2048, 65520.f, -65504.f, 0.1f});
    const int64_t n = p.numel();
    at::Tensor g = at::zeros({n}), m = at::zeros({n}), v = at::zeros({n}), copy = at::zeros({n}, dtype);
    // lr 0: the step leaves p as it is (m = v = 0, update 0), so the copy is exactly these values cast.
    cpu_adamw_step(p, g, m, v, {.lr = 0.0, .step = 1}, &copy);
    EXPECT_TRUE(at::equal(copy, p.to(dtype))) << copy.to(at::kFloat) << p.to(dtype).to(at::kFloat);
    p.index_put_({1}, std::numeric_limits<float>::quiet_NaN());
    p.index_put_({2}, std::numeric_limits<float>::infinity());
    cpu_adamw_step(p, g, m, v, {.lr = 0.0, .step = 1}, &copy);
    EXPECT_TRUE(std::isnan(copy[1].item<float>()));
    EXPECT_EQ(copy[2].item<float>(), std::numeric_limits<float>::infinity());
  }
}

TEST_P(CpuAdam, PreconditionsNameTheArgument) {
  {
    Step s;
    s.p = at::randn({50, 20}).t();  // same numel, not contiguous
    EXPECT_NE(s.error().find("param must be contiguous"), std::string::npos) << s.error();
  }
  {
    Step s;
    s.p = s.p.to(at::kBFloat16);
    EXPECT_NE(s.error().find("param must be float32"), std::string::npos) << s.error();
  }
  {
    Step s;
    s.g = at::randn({999});
    EXPECT_NE(s.error().find("grad has 999 elements"), std::string::npos) << s.error();
  }
  {
    Step s;
    s.v = s.v.to(at::kDouble);
    EXPECT_NE(s.error().find("exp_avg_sq must be float32"), std::string::npos) << s.error();
  }
  {
    Step s;
    at::Tensor copy = at::zeros({1000}, at::kInt);
    EXPECT_NE(s.error(&copy).find("model_copy must be bfloat16"), std::string::npos) << s.error(&copy);
  }
  {
    Step s;
    s.hyper.step = 0;
    EXPECT_NE(s.error().find("step is 1-based"), std::string::npos) << s.error();
  }
  Step s;
  EXPECT_EQ(s.error(), "<no error>");
  s.m = s.m.to(at::kHalf);
  EXPECT_THROW(cpu_adamw_step(s.p, s.g, s.m, s.v, s.hyper), c10::Error);  // TORCH_CHECK's type
}
