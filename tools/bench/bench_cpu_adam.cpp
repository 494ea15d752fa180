// Host AdamW step time: dschat::cpu_adamw_step vs LibTorch's torch::optim::AdamW and vs at::_fused_adamw_ (the
// CPU kernel torch.optim.AdamW(fused=True) runs), on the same fp32 tensors. Also a plain scalar loop of the same
// single pass and the portable (non-AVX2) kernel, to show what the vector code adds over the memory traffic alone.
//
//   bench_cpu_adam [--params N] [--tensors K] [--steps S] [--threads T]
//
// Defaults: 100M parameters in 4 tensors, 5 timed steps after 1 warm-up, LibTorch's default thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ops/_fused_adamw.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "dschat/sdk/cpu_adam.h"

using namespace dschat;

namespace {

constexpr double kLr = 1e-3, kBeta1 = 0.9, kBeta2 = 0.95, kEps = 1e-8, kWd = 0.1;

// The same single pass, one element at a time (vectorisation disabled), parallelised like cpu_adamw_step.
__attribute__((optimize("no-tree-vectorize"))) void scalar_range(float* p, const float* g, float* m, float* v,
                                                                 int64_t n, int64_t step) {
  const float decay = 1.0 - kLr * kWd, b1 = kBeta1, b2 = kBeta2, eps = kEps;
  const float inv_bc2_sqrt = 1.0 / std::sqrt(1.0 - std::pow(kBeta2, step));
  const float neg_step = -kLr / (1.0 - std::pow(kBeta1, step));
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] * b1 + gi * (1 - b1);
    const float vi = v[i] * b2 + gi * gi * (1 - b2);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay + neg_step * (mi / (std::sqrt(vi) * inv_bc2_sqrt + eps));
  }
}

struct Method {
  const char* name;
  std::function<void(int64_t)> step;  // takes the 1-based step number
  std::vector<double> seconds;
};

}  // namespace

int main(int argc, char** argv) try {
  int64_t params = 100'000'000, tensors = 4;
  int steps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int64_t value = std::atoll(argv[i + 1]);
    if (flag == "--params") params = value;
    else if (flag == "--tensors") tensors = value;
    else if (flag == "--steps") steps = static_cast<int>(value);
    else if (flag == "--threads") at::set_num_threads(static_cast<int>(value));
    else throw std::runtime_error("unknown flag " + flag);
  }
  const int64_t per = params / tensors;
  std::printf("params %lld (%lld x %lld fp32), threads %d, %d timed steps\n", static_cast<long long>(per * tensors),
              static_cast<long long>(tensors), static_cast<long long>(per), at::get_num_threads(), steps);

  std::vector<at::Tensor> p, g, m, v, copies, step_counts;
  for (int64_t t = 0; t < tensors; ++t) {
    p.push_back(at::randn({per}));
    g.push_back(at::randn({per}));
    m.push_back(at::zeros({per}));
    v.push_back(at::zeros({per}));
    copies.push_back(at::empty({per}, at::kBFloat16));
    step_counts.push_back(at::zeros({}));
  }

  for (int64_t t = 0; t < tensors; ++t) {
    p[t].requires_grad_(true);  // torch::optim::AdamW reads .grad(); the others ignore autograd
    p[t].mutable_grad() = g[t];
  }
  torch::optim::AdamW optimizer(p,
                                torch::optim::AdamWOptions(kLr).betas({kBeta1, kBeta2}).eps(kEps).weight_decay(kWd));
  auto ours = [&](at::Tensor* copies_or_null) {
    return [&, copies_or_null](int64_t step) {
      for (int64_t t = 0; t < tensors; ++t)
        cpu_adamw_step(p[t], g[t], m[t], v[t], {.lr = kLr, .weight_decay = kWd, .step = step},
                       copies_or_null ? &copies_or_null[t] : nullptr);
    };
  };
  std::vector<Method> methods;
  methods.push_back({"dschat::cpu_adamw_step", ours(nullptr)});
  methods.push_back({"dschat::cpu_adamw_step + bf16 model copy", ours(copies.data())});
  methods.push_back({"  same, portable kernel (at::vec, baseline ISA)", [&](int64_t step) {
                       setenv("DSCHAT_CPU_ADAM_PORTABLE", "1", 1);
                       ours(copies.data())(step);
                       unsetenv("DSCHAT_CPU_ADAM_PORTABLE");
                     }});
  methods.push_back({"scalar single-pass loop (no vectorisation)", [&](int64_t step) {
                       for (int64_t t = 0; t < tensors; ++t) {
                         float *pp = p[t].data_ptr<float>(), *mp = m[t].data_ptr<float>(),
                               *vp = v[t].data_ptr<float>();
                         const float* gp = g[t].data_ptr<float>();
                         at::parallel_for(0, per, 32 * 1024, [&](int64_t b, int64_t e) {
                           scalar_range(pp + b, gp + b, mp + b, vp + b, e - b, step);
                         });
                       }
                     }});
  methods.push_back({"at::_fused_adamw_", [&](int64_t) {
                       at::_foreach_add_(step_counts, 1);
                       at::_fused_adamw_(p, g, m, v, {}, step_counts, kLr, kBeta1, kBeta2, kWd, kEps,
                                         /*amsgrad=*/false, /*maximize=*/false);
                     }});
  methods.push_back({"torch::optim::AdamW (LibTorch)", [&](int64_t) { optimizer.step(); }});

  // Methods take turns, one step each per round, so that a burst of load from elsewhere on the machine hits
  // them alike; the median and the best round are reported.
  for (auto& method : methods) method.step(1);  // warm-up: lazily created state, first touch of the copies
  for (int round = 0; round < steps; ++round) {
    for (auto& method : methods) {
      const auto start = std::chrono::steady_clock::now();
      method.step(round + 2);
      method.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  auto median = [](std::vector<double> s) {
    std::sort(s.begin(), s.end());
    return s.size() % 2 ? s[s.size() / 2] : (s[s.size() / 2 - 1] + s[s.size() / 2]) / 2;
  };
  auto best = [](const std::vector<double>& s) { return *std::min_element(s.begin(), s.end()); };
  const double libtorch = median(methods[5].seconds), fused = median(methods[4].seconds);
  const double libtorch_best = best(methods[5].seconds), fused_best = best(methods[4].seconds);
  std::printf("cpu_adamw_step kernel: %s; median (best) of %d steps\n", cpu_adam_kernel(), steps);
  for (const auto& method : methods) {
    const double s = median(method.seconds), b = best(method.seconds);
    std::printf("%-48s %7.1f (%6.1f) ms/step  %5.2f Gparam/s  x%5.2f (x%5.2f) vs torch::optim::AdamW  "
                "x%4.2f (x%4.2f) vs _fused_adamw_\n",
                method.name, s * 1e3, b * 1e3, per * tensors / s / 1e9, libtorch / s, libtorch_best / b, fused / s,
                fused_best / b);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_cpu_adam: %s\n", e.what());
  return 1;
}
