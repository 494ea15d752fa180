// The pipeline's `device` resolved against this build and machine (the build-specific parts are device_cpu.cpp
// and device_cuda.cpp with cuda/device_info.cu).
#include "dschat/sdk/device.h"

#include <atomic>
#include <fstream>
#include <string>
#include <stdexcept>

#include <fmt/format.h>

#include "dschat/sdk/config.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

namespace detail {
void set_current_cuda_device(int index);  // device_cpu.cpp / device_cuda.cpp
}  // namespace detail

namespace {
std::atomic<int> process_device_index{-1};  // -1: the CPU
}  // namespace

c10::Device resolve_device(const std::string& spec, int local_rank, int local_world_size) {
  if (spec == "cpu") return c10::Device(c10::kCPU);
  const bool want_cuda = spec == "cuda" || spec.rfind("cuda:", 0) == 0;
  if (spec != "auto" && !want_cuda)
    throw std::invalid_argument(fmt::format("device = \"{}\": expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"", spec));
  std::string problem;
  const auto gpus = list_accelerators(&problem);
  const int count = static_cast<int>(gpus.size());
  if (spec == "auto")
    return count > 0 && count >= local_world_size ? c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank))
                                                  : c10::Device(c10::kCPU);
  if (!built_with_cuda())
    throw std::invalid_argument(fmt::format(
        "device = \"{}\", but this dschat was built for the CPU only: rebuild with cmake -DDSCHAT_CUDA=ON, or set "
        "device = \"cpu\"", spec));
  if (count == 0)
    throw std::invalid_argument(fmt::format("device = \"{}\", but no CUDA device is visible{}{}: set device = \"cpu\"",
                                            spec, problem.empty() ? "" : " (", problem.empty() ? "" : problem + ")"));
  int index = local_rank;
  if (spec != "cuda") {
    const std::string digits = spec.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 4)
      throw std::invalid_argument(fmt::format("device = \"{}\": expected \"cuda:N\" with N a GPU index", spec));
    index = std::stoi(digits);
  }
  if (index >= count)
    throw std::invalid_argument(fmt::format(
        "device = \"{}\" needs GPU {} but {} visible ({}){}", spec, index,
        count == 1 ? "only 1 is" : fmt::format("only {} are", count), gpus.front().name,
        spec == "cuda" ? fmt::format(": LOCAL_RANK {} of {} has no GPU of its own", local_rank, local_world_size)
                       : std::string()));
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void use_device(c10::Device device) {
  if (device.is_cuda()) detail::set_current_cuda_device(device.index());
  process_device_index = device.is_cuda() ? device.index() : -1;
}

c10::Device default_device() {
  const int index = process_device_index;
  return index < 0 ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

std::string read_device_option(const ConfigTable& options) {
  auto spec = options.get_string("device", "auto");
  try {
    resolve_device(spec);
  } catch (const std::invalid_argument& e) {
    options.fail("device", e.what());
  }
  return spec;
}

at::Device place_on(const std::string& device_option) {
  if (device_option == "auto") return default_device();
  const auto& env = launch_environment();
  return resolve_device(device_option, env.local_rank, env.local_world_size);
}

namespace {
// A "Key:   123 kB" line of a /proc file, in bytes; 0 when absent.
size_t proc_kb_field(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return static_cast<size_t>(std::stoull(line.substr(key.size()))) * 1024;
  return 0;
}
}  // namespace

size_t resident_bytes() { return proc_kb_field("/proc/self/status", "VmRSS:"); }
size_t available_host_memory() { return proc_kb_field("/proc/meminfo", "MemAvailable:"); }
size_t peak_resident_bytes() { return proc_kb_field("/proc/self/status", "VmHWM:"); }

bool reset_peak_resident() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";  // 5: reset the peak RSS to the current RSS
  clear_refs.flush();
  return static_cast<bool>(clear_refs);
}

}  // namespace dschat
