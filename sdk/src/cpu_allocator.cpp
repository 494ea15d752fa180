// The caching CPU allocator (dschat/sdk/cpu_allocator.h).
//
// Every DataPtr it returns is "simple" (context == data, one raw deleter), as c10::Allocator::raw_allocate and
// oneDNN's engine allocator (which LibTorch routes here) require, so a large block's size is kept in a map keyed
// by its address. Freed blocks wait in a size-ordered multimap; a request takes the smallest cached block that is
// at least as large and at most a quarter larger (sizes are rounded to 4 KiB below 1 MiB and to 64 KiB above, so
// a training loop's recurring shapes hit exactly).
#include "dschat/sdk/cpu_allocator.h"

#include <algorithm>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

namespace dschat {

namespace {

constexpr size_t kMinCachedBytes = size_t{128} << 10;  // glibc's initial mmap threshold
// Cached bytes stay within a quarter of the most ever live at once (and this floor): a recurring loop's blocks
// come back, while blocks of shapes that do not recur (an evaluation's, a shorter rollout's) cannot pile up past
// the working set. Without it a 135M-parameter SFT step peaked at 6.6 GB resident for 3.9 GB live.
constexpr size_t kCacheFloorBytes = size_t{64} << 20;
constexpr size_t kCacheShareOfPeakLive = 4;

// Block sizes: 4 KiB pages below 1 MiB, 64 KiB steps above.
size_t round_size(size_t n) {
  const size_t step = n < (size_t{1} << 20) ? size_t{4} << 10 : size_t{64} << 10;
  return (n + step - 1) / step * step;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) {
      void* data = c10::alloc_cpu(n);
      return {data, data, &free_block, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t size = round_size(n);
    void* data = take_cached(size);
    if (data == nullptr) {
      try {
        data = c10::alloc_cpu(size);
      } catch (const c10::Error&) {  // out of memory: give the cache back and try once more
        empty_cache();
        data = c10::alloc_cpu(size);
      }
      std::lock_guard<std::mutex> lock(mutex_);
      live_[data] = size;
      stats_.live_bytes += static_cast<int64_t>(size);
      peak_live_ = std::max(peak_live_, static_cast<size_t>(stats_.live_bytes));
    }
    return {data, data, &free_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &free_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void set_cap(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    cap_ = bytes;
    trim_locked(cap_);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked(0);
    peak_live_ = static_cast<size_t>(stats_.live_bytes);  // a new regime (the next stage) sets its own
  }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  static CachingCpuAllocator& instance() {
    static auto* allocator = new CachingCpuAllocator();  // never destroyed: tensors may outlive static destruction
    return *allocator;
  }

 private:
  void* take_cached(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 4) {
      ++stats_.misses;
      return nullptr;
    }
    void* data = it->second;
    const size_t block = it->first;
    free_.erase(it);
    live_[data] = block;
    stats_.cached_bytes -= static_cast<int64_t>(block);
    stats_.live_bytes += static_cast<int64_t>(block);
    peak_live_ = std::max(peak_live_, static_cast<size_t>(stats_.live_bytes));
    ++stats_.hits;
    return data;
  }

  static void free_block(void* data) {
    if (data == nullptr) return;
    auto& self = instance();
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto it = self.live_.find(data);
      if (it != self.live_.end()) {
        const size_t size = it->second;
        self.live_.erase(it);
        self.stats_.live_bytes -= static_cast<int64_t>(size);
        const size_t limit = self.limit_locked();
        if (size > limit) {
          c10::free_cpu(data);
          return;
        }
        // Room for it: the largest cached blocks go first (a new shape regime usually replaces old ones).
        self.trim_locked(limit - size);
        self.free_.emplace(size, data);
        self.stats_.cached_bytes += static_cast<int64_t>(size);
        return;
      }
    }
    c10::free_cpu(data);  // a small block
  }

  size_t limit_locked() const {
    return std::min(cap_, std::max(kCacheFloorBytes, peak_live_ / kCacheShareOfPeakLive));
  }

  // Frees cached blocks, largest first, until at most `limit` bytes stay cached. Called with mutex_ held.
  void trim_locked(size_t limit) {
    while (!free_.empty() && static_cast<size_t>(stats_.cached_bytes) > limit) {
      auto last = std::prev(free_.end());
      c10::free_cpu(last->second);
      stats_.cached_bytes -= static_cast<int64_t>(last->first);
      free_.erase(last);
    }
  }

  std::mutex mutex_;
  size_t cap_ = 0;
  size_t peak_live_ = 0;  // the most large-block bytes live at once since the last empty_cache
  std::unordered_map<void*, size_t> live_;
  std::multimap<size_t, void*> free_;
  CpuCacheStats stats_;
};

}  // namespace

void install_caching_cpu_allocator(int64_t max_cached_bytes) {
  TORCH_CHECK(max_cached_bytes >= 0, "install_caching_cpu_allocator: the cap must be >= 0, got ", max_cached_bytes);
  auto& allocator = CachingCpuAllocator::instance();
  allocator.set_cap(static_cast<size_t>(max_cached_bytes));
  // Priority above LibTorch's default CPU allocator (0), so nothing LibTorch registers later replaces it; setting
  // the same allocator again is a no-op.
  c10::SetCPUAllocator(&allocator, /*priority=*/1);
}

void install_cpu_allocator_from_environment() {
  const char* choice = std::getenv("DSCHAT_CPU_ALLOCATOR");
  if (choice != nullptr && std::string(choice) == "system") return;
  TORCH_CHECK(choice == nullptr || *choice == '\0' || std::string(choice) == "caching",
              "DSCHAT_CPU_ALLOCATOR must be \"caching\" or \"system\", got \"", choice, "\"");
  int64_t cap = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<int64_t>(sysconf(_SC_PAGE_SIZE)) / 4;
  if (const char* mb = std::getenv("DSCHAT_CPU_CACHE_MB"); mb != nullptr && *mb != '\0') {
    char* end = nullptr;
    const long long value = std::strtoll(mb, &end, 10);
    TORCH_CHECK(end != mb && *end == '\0' && value >= 0, "DSCHAT_CPU_CACHE_MB must be a number of MiB >= 0, got \"",
                mb, "\"");
    cap = static_cast<int64_t>(value) << 20;
  }
  install_caching_cpu_allocator(cap);
}

bool caching_cpu_allocator_installed() { return c10::GetCPUAllocator() == &CachingCpuAllocator::instance(); }

CpuCacheStats caching_cpu_allocator_stats() { return CachingCpuAllocator::instance().stats(); }

void empty_cpu_cache() { CachingCpuAllocator::instance().empty_cache(); }

}  // namespace dschat
