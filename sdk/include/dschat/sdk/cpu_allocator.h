#pragma once
// A caching allocator for LibTorch's large CPU tensors.
//
// glibc serves every block over 32 MiB (and, with its default settings, many over 128 KiB) with a fresh mmap and
// returns it to the kernel on free, so each training step's gradients, logits and activations fault in and
// zero-fill their pages again: a quarter of all cycles of a CPU PPO iteration on OPT-125m went to the kernel's
// clear_page. Like LibTorch's CUDA caching allocator, this one keeps freed blocks of 128 KiB and more (up to a
// cap) and hands them out again; smaller ones go straight to c10::alloc_cpu / free_cpu, whose heap reuses them.
// What it keeps cached is also held within a quarter of the most bytes ever live at once (64 MiB at least), so
// the resident set stays near the working set that `dschat plan` predicts.
#include <cstdint>

#include "dschat/sdk/export.h"

namespace dschat {

struct CpuCacheStats {
  int64_t cached_bytes = 0;  // freed blocks held for reuse
  int64_t live_bytes = 0;    // large blocks in use
  int64_t hits = 0, misses = 0;
};

// Makes the caching allocator LibTorch's CPU allocator (tensors allocated before keep their own deleter), holding
// at most max_cached_bytes of freed blocks. Idempotent; later calls only change the cap.
DSCHAT_SDK_API void install_caching_cpu_allocator(int64_t max_cached_bytes);

// DSCHAT_CPU_ALLOCATOR=system keeps LibTorch's allocator; otherwise the caching one, with a cap of
// DSCHAT_CPU_CACHE_MB (default: a quarter of physical memory). What the dschat host calls at start-up.
DSCHAT_SDK_API void install_cpu_allocator_from_environment();

DSCHAT_SDK_API bool caching_cpu_allocator_installed();
DSCHAT_SDK_API CpuCacheStats caching_cpu_allocator_stats();
// Frees every cached block (the cap stays).
DSCHAT_SDK_API void empty_cpu_cache();

}  // namespace dschat
