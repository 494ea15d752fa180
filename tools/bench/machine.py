"""What every benchmark prints about the machine, and the physical bounds its figures are shares of.

    describe(threads)            -> lines: CPU model and the SIMD flags the kernels dispatch on, threads, the
                                    allocator each side runs with, torch's build (BLAS, oneDNN, ISA, OpenMP)
    read_bandwidth_gbs(threads)  -> DRAM read bandwidth (GB/s): torch.sum over 1 GiB, far past every cache
    gemm_peak_gflops(dtype, threads) -> a large square at::mm (MKL sgemm / oneDNN bf16), the reachable GEMM peak
    gemm_line(threads)           -> fp32 peaks of MKL and oneDNN, and which one dschat's linears run on
    peak_rss_mb()                -> this process's peak resident set (MB)
    run_child(cmd, env, cwd)     -> (returncode, stdout, stderr, wall seconds, cmd's own peak RSS in MB)
    jemalloc_path()              -> Debian's libjemalloc.so.2 for LD_PRELOAD, or None

Both probes run in the benchmark's own process just before its rows, so the shares printed next to each figure
are of the bound measured on the same machine in the same minute.
"""
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

# Flags dschat's kernels and oneDNN dispatch on.
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown", set()
    name = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)$", text, re.M)
    model = re.search(r"^model\s*:\s*(\d+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    label = name.group(1).strip() if name else "unknown"
    if family and model:
        label += f" (family {family.group(1)}, model {model.group(1)}{zen_generation(family, model)})"
    return label, set(flags.group(1).split()) if flags else set()


def zen_generation(family, model):
    """AMD reports 'AMD EPYC' without a generation under some hypervisors; family/model still tell it."""
    f, m = int(family.group(1)), int(model.group(1))
    if f == 0x19:
        return ", Zen 4" if (0x10 <= m <= 0x1F or 0x60 <= m <= 0xAF) else ", Zen 3"
    if f == 0x1A:
        return ", Zen 5"
    return ""


def jemalloc_path():
    for path in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"):
        if os.path.exists(path):
            return path
    return None


def torch_build():
    import torch  # imported here so that run_child's launcher path stays light
    config = torch.__config__.show()
    keep = []
    for key in ("BLAS_INFO", "LAPACK_INFO", "USE_MKLDNN", "USE_OPENMP", "CPU capability usage"):
        hit = re.search(rf"{re.escape(key)}\s*[=:]\s*([^,\n]+)", config)
        if hit:
            keep.append(f"{key}={hit.group(1).strip()}")
    onednn = re.search(r"Intel\(R\) MKL-DNN v[\d.]+|oneDNN v[\d.]+|DNNL v[\d.]+", config)
    if onednn:
        keep.append(onednn.group(0))
    return f"torch {torch.__version__}: " + ", ".join(keep)


def describe(threads):
    name, flags = cpu_model()
    have = [f for f in FLAGS if f in flags]
    allocator = os.environ.get("DSCHAT_CPU_ALLOCATOR", "caching (dschat's default)")
    preload = os.environ.get("LD_PRELOAD", "")
    return [
        f"CPU: {name}; {os.cpu_count()} logical cores; flags: {' '.join(have) or 'none of ' + ' '.join(FLAGS)}",
        f"threads: {threads} (torch.set_num_threads here, at::set_num_threads in dschat's drivers)",
        f"allocator: dschat {allocator}; python side glibc malloc"
        + (f" (LD_PRELOAD={preload})" if preload else "") + "; jemalloc rows use LD_PRELOAD="
        + (jemalloc_path() or "<libjemalloc2 not installed>"),
        torch_build(),
    ]


def run_child(cmd, env=None, cwd=None):
    """Runs cmd through rss_launch.py (see there why); (returncode, stdout, stderr, wall s, peak RSS MB)."""
    launcher = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rss_launch.py")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        start = time.perf_counter()
        subprocess.run([sys.executable, launcher, result.name, *cmd], stdout=out, stderr=err, env=env, cwd=cwd,
                       text=True)
        wall = time.perf_counter() - start
        status = json.load(open(result.name)) if os.path.getsize(result.name) else {"rc": -1, "rss_mb": 0.0}
        out.seek(0)
        err.seek(0)
        return status["rc"], out.read(), err.read(), wall, status["rss_mb"]


def _best_seconds(fn, repeats):
    fn()  # warm: page faults, thread pool start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth_gbs(threads, gib=1.0, repeats=5):
    """DRAM read bandwidth as torch.sum streams it: the bound a decode step that reads each weight once meets."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
        seconds = _best_seconds(lambda: x.sum(), repeats)
        return x.numel() * 4 / seconds / 1e9
    finally:
        torch.set_num_threads(previous)


def gemm_peak_gflops(dtype, threads, n=2048, repeats=3, backend="aten"):
    """The GEMM rate LibTorch reaches at a large square shape: the bound training's matmuls are a share of.

    backend "aten": torch.mm (MKL sgemm for fp32, oneDNN for bf16); "onednn": oneDNN's fp32 matmul (mkldnn_linear
    on oneDNN-layout operands), what dschat's fp32 linears run on where dschat_fp32_gemm() says "onednn"."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        if backend == "onednn":
            am, bm = a.to_mkldnn(), b.to_mkldnn()
            seconds = _best_seconds(lambda: torch._C._nn.mkldnn_linear(am, bm, None), repeats)
        else:
            seconds = _best_seconds(lambda: torch.mm(a, b), repeats)
        return 2 * n ** 3 / seconds / 1e9
    finally:
        torch.set_num_threads(previous)


def dschat_fp32_gemm():
    """What dschat's fp32 CPU linears run on (sdk/include/dschat/sdk/nn/onednn_linear.h): DSCHAT_CPU_GEMM, else
    oneDNN on AMD CPUs with AVX-512F (MKL runs its AVX2 kernels there), else MKL."""
    choice = os.environ.get("DSCHAT_CPU_GEMM", "auto") or "auto"
    if choice != "auto":
        return choice
    name, flags = cpu_model()
    try:
        with open("/proc/cpuinfo") as f:
            amd = "AuthenticAMD" in f.read(4096)
    except OSError:
        amd = False
    return "onednn" if amd and "avx512f" in flags else "mkl"


def gemm_line(threads):
    """One line: the fp32 GEMM peak of MKL (what PyTorch's torch.mm runs) and of oneDNN, and dschat's choice."""
    import torch
    mkl = gemm_peak_gflops(torch.float32, threads)
    onednn = gemm_peak_gflops(torch.float32, threads, backend="onednn")
    return (f"fp32 GEMM peak (2048^3, {threads} threads): torch.mm (MKL) {mkl:.0f} GFLOP/s, oneDNN {onednn:.0f} "
            f"GFLOP/s; dschat's fp32 linears run on {dschat_fp32_gemm()} (DSCHAT_CPU_GEMM; the Python sides on MKL)")


def peak_rss_mb(children=False):
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024
