#include "dschat/sdk/nn/onednn_linear.h"

#include <ATen/Context.h>
#include <ATen/Functions.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <string>
#include <vector>

// LibTorch exports it (aten/src/ATen/native/mkldnn/Matmul.h, a header the wheel does not ship):
// result = beta * result + alpha * mat1 @ mat2 on oneDNN, for 2-D operands that are contiguous or transposed.
namespace at::native {
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native

namespace dschat {

namespace {

bool choose_onednn() {
  const char* env = std::getenv("DSCHAT_CPU_GEMM");
  const std::string choice = env == nullptr || *env == '\0' ? "auto" : env;
  TORCH_CHECK(choice == "auto" || choice == "onednn" || choice == "mkl",
              "DSCHAT_CPU_GEMM must be \"auto\", \"onednn\" or \"mkl\", got \"", choice, "\"");
  if (choice == "mkl" || !at::hasMKLDNN()) return false;
  if (choice == "onednn") return true;
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_is("amd") && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool onednn_enabled() {
  static const bool enabled = choose_onednn();
  return enabled;
}

// mat1 [M, K] @ mat2 [K, N] into a new contiguous [M, N]; operands that are neither contiguous nor a transpose
// are copied first (oneDNN reads those two layouts in place).
at::Tensor onednn_mm(const at::Tensor& mat1, const at::Tensor& mat2) {
  auto in_place = [](const at::Tensor& t) { return t.is_contiguous() || t.t().is_contiguous(); };
  const at::Tensor a = in_place(mat1) ? mat1 : mat1.contiguous();
  const at::Tensor b = in_place(mat2) ? mat2 : mat2.contiguous();
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  at::native::mkldnn_matmul(a, b, out, 0.0f, 1.0f);
  return out;
}

at::Tensor forward_2d(const at::Tensor& x2d, const at::Tensor& weight, const at::Tensor& bias) {
  at::Tensor y = onednn_mm(x2d, weight.t());
  if (bias.defined()) y.add_(bias);
  return y;
}

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t out_features) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  return shape;
}

class OnednnLinearFunction : public torch::autograd::Function<OnednnLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias) {
    ctx->save_for_backward({x, weight});
    const int64_t K = weight.size(1);
    return forward_2d(x.reshape({-1, K}), weight, bias).view(output_shape(x, weight.size(0)));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const int64_t N = weight.size(0), K = weight.size(1);
    const at::Tensor grad = grad_outputs[0].reshape({-1, N});  // [M, N]
    at::Tensor grad_x, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) grad_x = onednn_mm(grad, weight).view(x.sizes());       // [M, K]
    if (ctx->needs_input_grad(1)) grad_weight = onednn_mm(grad.t(), x.reshape({-1, K}));  // [N, K]
    if (ctx->needs_input_grad(2)) grad_bias = grad.sum(0);
    return {grad_x, grad_weight, grad_bias};
  }
};

bool needs_grad(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::GradMode::is_enabled() &&
         (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
}

}  // namespace

const char* cpu_gemm_backend() { return onednn_enabled() ? "onednn" : "mkl"; }

bool use_onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!onednn_enabled() || !x.defined() || !weight.defined()) return false;
  if (!x.device().is_cpu() || !weight.device().is_cpu()) return false;
  if (x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat) return false;
  if (weight.dim() != 2 || x.dim() < 1 || x.size(-1) != weight.size(1) || x.numel() == 0 || weight.numel() == 0)
    return false;
  if (bias.defined() && (!bias.device().is_cpu() || bias.scalar_type() != at::kFloat || bias.dim() != 1 ||
                         bias.size(0) != weight.size(0)))
    return false;
  return true;
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!needs_grad(x, weight, bias)) {
    at::NoGradGuard no_grad;  // the inputs may still require grad outside a grad-mode region
    return forward_2d(x.reshape({-1, weight.size(1)}), weight, bias).view(output_shape(x, weight.size(0)));
  }
  // A custom Function's tensor inputs must be defined: no bias is a zero bias that needs no gradient.
  const at::Tensor b = bias.defined() ? bias : at::zeros({weight.size(0)}, weight.options());
  return OnednnLinearFunction::apply(x, weight, b);
}

}  // namespace dschat
