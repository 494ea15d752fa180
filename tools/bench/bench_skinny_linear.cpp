// Decode-step linear: dschat::skinny_linear vs at::linear at skinny shapes (M rows of x, one per sequence), for
// the OPT-125m LM head and block matrices, fp32 and bf16. Each timed call uses the next of several copies of W
// (>= 256 MB in all), so W comes from DRAM as in a real decode step (a model's weights do not fit in cache).
//
//   bench_skinny_linear [--threads T] [--ms MILLISECONDS_PER_POINT] [--rows 1,2,4,8,12,16] [--dtypes fp32,bf16]
//
// Prints ms per call, W read rate (GB/s) and at::linear / skinny (> 1: the kernel is faster). For bf16 also the
// upcast GEMM (fp32 at::linear on upcast operands, W's conversion included: fast_linear's bf16 path past the
// kernel's rows on CPUs without oneDNN bf16 kernels) and at::linear / upcast.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "dschat/sdk/nn/skinny_linear.h"

namespace {

template <typename F>
double best_ms(F&& f, double budget_ms) {
  f();  // warm-up
  std::vector<double> times;
  double total = 0;
  while (total < budget_ms || times.size() < 5) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    times.push_back(ms);
    total += ms;
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];  // median: robust to a neighbour's burst
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  double budget = 300;
  std::vector<int64_t> rows{1, 2, 4, 8, 12, 16};
  std::string dtypes = "fp32,bf16";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--threads") threads = std::atoi(value.c_str());
    else if (flag == "--ms") budget = std::atof(value.c_str());
    else if (flag == "--dtypes") dtypes = value;
    else if (flag == "--rows") {
      rows.clear();
      std::stringstream ss(value);
      for (std::string item; std::getline(ss, item, ',');) rows.push_back(std::atoll(item.c_str()));
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  at::set_num_threads(threads);
  at::NoGradGuard no_grad;
  // OPT-125m's LM head and block matrices, then SmolLM2-135M's (LLaMA: tied head, GQA k/v, 1536-wide MLP).
  std::vector<std::pair<int64_t, int64_t>> shapes{{50272, 768}, {3072, 768}, {768, 3072}, {768, 768},
                                                  {49152, 576}, {1536, 576}, {576, 1536}, {192, 576}};
  std::printf("threads %d, skinny loop %s (other loops: ms per call)\n%-14s %-5s %3s %10s %8s %10s %8s %7s %10s %7s\n",
              threads, dschat::skinny_isa_name(dschat::skinny_best_isa()), "W [N,K]", "dtype", "M", "linear ms",
              "GB/s", "skinny ms", "GB/s", "ratio", "upcast ms", "ratio");
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    if (dtypes.find(dtype == at::kFloat ? "fp32" : "bf16") == std::string::npos) continue;
    for (auto [N, K] : shapes) {
      const int64_t bytes = N * K * at::elementSize(dtype);
      const int64_t copies = std::max<int64_t>(1, (int64_t{256} << 20) / bytes);
      std::vector<at::Tensor> ws;
      for (int64_t c = 0; c < copies; ++c) ws.push_back(at::randn({N, K}).to(dtype));
      for (int64_t M : rows) {
        auto x = at::randn({M, K}).to(dtype);
        size_t i = 0, j = 0;
        const double lin = best_ms([&] { at::linear(x, ws[i++ % ws.size()]); }, budget);
        const double sk = best_ms([&] { dschat::skinny_linear(x, ws[j++ % ws.size()]); }, budget);
        std::string others;  // every other loop this CPU has, ms
        for (auto isa : {dschat::SkinnyIsa::kAvx2, dschat::SkinnyIsa::kAvx512, dschat::SkinnyIsa::kAvx512Bf16}) {
          if (!dschat::skinny_isa_supported(isa) || isa == dschat::skinny_best_isa()) continue;
          if (isa == dschat::SkinnyIsa::kAvx512Bf16 && dtype == at::kFloat) continue;
          size_t o = 0;
          const double t = best_ms([&] { dschat::skinny_linear(isa, x, ws[o++ % ws.size()]); }, budget);
          others += std::string(" ") + dschat::skinny_isa_name(isa) + " " + std::to_string(t).substr(0, 6);
        }
        double up = 0;
        if (dtype == at::kBFloat16) {
          size_t k = 0;
          up = best_ms([&] { at::linear(x.to(at::kFloat), ws[k++ % ws.size()].to(at::kFloat)).to(dtype); }, budget);
        }
        std::printf("[%5ld,%4ld]   %-5s %3ld %10.3f %8.1f %10.3f %8.1f %7.2f %10.3f %7.2f |%s\n",
                    static_cast<long>(N), static_cast<long>(K), dtype == at::kFloat ? "fp32" : "bf16",
                    static_cast<long>(M), lin, bytes / lin / 1e6, sk, bytes / sk / 1e6, lin / sk, up,
                    up > 0 ? lin / up : 0.0, others.c_str());
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
