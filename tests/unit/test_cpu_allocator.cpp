// The caching CPU allocator: freed large blocks come back for the next tensor of their size, small ones and
// blocks past the cap are not kept, raw allocations (oneDNN's path) work, and the environment switch is checked.
#include <gtest/gtest.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <vector>

#include "dschat/sdk/cpu_allocator.h"

using namespace dschat;

namespace {
constexpr int64_t kMiB = int64_t{1} << 20;
at::Tensor floats(int64_t bytes) { return at::empty({bytes / 4}, at::kFloat); }
}  // namespace

TEST(CachingCpuAllocator, ReusesFreedLargeBlocksUpToTheCap) {
  install_caching_cpu_allocator(64 * kMiB);
  ASSERT_TRUE(caching_cpu_allocator_installed());
  empty_cpu_cache();

  void* first = nullptr;
  {
    auto t = at::full({4 * kMiB / 4}, 3.0f);
    first = t.data_ptr();
    EXPECT_EQ(caching_cpu_allocator_stats().live_bytes, 4 * kMiB);
  }
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 4 * kMiB);
  const auto before = caching_cpu_allocator_stats();
  {
    auto t = floats(4 * kMiB - 4096);  // rounds to the same 64 KiB multiple: the same block
    EXPECT_EQ(t.data_ptr(), first);
    t.fill_(2.0f);
    EXPECT_EQ(t.sum().item<double>(), 2.0 * static_cast<double>(t.numel()));
    EXPECT_EQ(caching_cpu_allocator_stats().hits, before.hits + 1);
    EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 0);
    auto other = floats(4 * kMiB);  // the cached block is taken: a new one
    EXPECT_NE(other.data_ptr(), first);
  }
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 8 * kMiB);
  { auto much_larger = floats(16 * kMiB); }  // a 4 MiB block is too small for it, and it is kept once freed
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 24 * kMiB);

  // Small tensors bypass the cache; a block larger than the cap is freed at once.
  { auto small = floats(64 << 10); }
  { auto huge = floats(80 * kMiB); }
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 24 * kMiB);
  EXPECT_EQ(caching_cpu_allocator_stats().live_bytes, 0);

  // Lowering the cap frees the largest cached blocks first.
  install_caching_cpu_allocator(10 * kMiB);
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 8 * kMiB);
  empty_cpu_cache();
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 0);
  install_caching_cpu_allocator(64 * kMiB);
}

TEST(CachingCpuAllocator, CachedBytesStayWithinAQuarterOfThePeakLive) {
  install_caching_cpu_allocator(int64_t{4} << 30);
  empty_cpu_cache();
  {
    std::vector<at::Tensor> live;
    for (int i = 0; i < 8; ++i) live.push_back(floats(64 * kMiB));  // 512 MiB live at once (pages untouched)
  }
  // All freed: a quarter of the 512 MiB peak stays cached, not all of it.
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 128 * kMiB);
  { auto again = floats(64 * kMiB); }  // a recurring shape still comes from the cache
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 128 * kMiB);
  empty_cpu_cache();
  install_caching_cpu_allocator(64 * kMiB);
}

TEST(CachingCpuAllocator, RawAllocationsRoundTrip) {
  install_caching_cpu_allocator(64 * kMiB);
  empty_cpu_cache();
  c10::Allocator* allocator = c10::GetCPUAllocator();
  for (size_t bytes : {size_t{256}, size_t{3} << 20}) {
    void* p = allocator->raw_allocate(bytes);
    ASSERT_NE(p, nullptr);
    static_cast<char*>(p)[bytes - 1] = 7;
    allocator->raw_deallocate(p);
  }
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 3 * kMiB);
  EXPECT_EQ(caching_cpu_allocator_stats().live_bytes, 0);
}

TEST(CachingCpuAllocator, EnvironmentSwitchIsChecked) {
  ::setenv("DSCHAT_CPU_ALLOCATOR", "jemalloc", 1);
  EXPECT_THROW(install_cpu_allocator_from_environment(), c10::Error);
  ::setenv("DSCHAT_CPU_ALLOCATOR", "caching", 1);
  ::setenv("DSCHAT_CPU_CACHE_MB", "lots", 1);
  EXPECT_THROW(install_cpu_allocator_from_environment(), c10::Error);
  ::setenv("DSCHAT_CPU_CACHE_MB", "32", 1);
  install_cpu_allocator_from_environment();
  empty_cpu_cache();
  { auto t = floats(40 * kMiB); }  // past the 32 MiB cap
  EXPECT_EQ(caching_cpu_allocator_stats().cached_bytes, 0);
  ::unsetenv("DSCHAT_CPU_ALLOCATOR");
  ::unsetenv("DSCHAT_CPU_CACHE_MB");
}
