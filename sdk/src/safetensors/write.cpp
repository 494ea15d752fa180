// Writing .safetensors files and sharded model folders. Every file goes to a temporary name first and is renamed
// into place after fsync, so a crash never leaves a truncated file under the final name.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>

#include <ATen/ops/isfinite.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/safetensors.h"

namespace dschat::safetensors {
namespace {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path)
      : path_(std::move(path)), tmp_(path_.string() + ".tmp-" + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw SafetensorsError(path_, fmt::format("cannot create {}: {}", tmp_.string(), std::strerror(errno)));
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd_, p, std::min<size_t>(size, 1ull << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw SafetensorsError(path_, fmt::format("cannot write {}: {}", tmp_.string(), std::strerror(errno)));
      p += n;
      size -= static_cast<size_t>(n);
    }
  }

  void commit() {
    if (::fsync(fd_) != 0) throw SafetensorsError(path_, fmt::format("fsync failed: {}", std::strerror(errno)));
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw SafetensorsError(path_, fmt::format("close failed: {}", std::strerror(errno)));
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      throw SafetensorsError(path_, fmt::format("cannot rename {} into place: {}", tmp_.string(), std::strerror(errno)));
    committed_ = true;
    // Make the rename itself durable.
    auto dir = path_.parent_path().empty() ? std::filesystem::path(".") : path_.parent_path();
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Refuses what the format cannot hold, before any byte is written.
void check_tensors(const std::filesystem::path& where, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") throw SafetensorsError(where, "a tensor may not be named \"__metadata__\"");
    if (!seen.insert(name).second) throw SafetensorsError(where, fmt::format("tensor '{}' given twice", name));
    if (!t.defined()) throw SafetensorsError(where, fmt::format("tensor '{}' is undefined", name));
    if (t.layout() != at::kStrided)
      throw SafetensorsError(where, fmt::format("tensor '{}' is not dense (layout {})", name, c10::str(t.layout())));
    if (!dtype_name(t.scalar_type()))
      throw SafetensorsError(where, fmt::format("tensor '{}' has dtype {}, which safetensors cannot store", name,
                                                c10::toString(t.scalar_type())));
  }
}

uint64_t nbytes(const at::Tensor& t) { return static_cast<uint64_t>(t.numel()) * c10::elementSize(t.scalar_type()); }

// "model-00001-of-00003.safetensors"
std::string shard_name(size_t i, size_t n) { return fmt::format("model-{:05d}-of-{:05d}.safetensors", i, n); }

bool is_shard_name(const std::string& s) {
  if (s.size() != 32 || s.rfind("model-", 0) != 0 || s.compare(11, 4, "-of-") != 0 ||
      s.compare(20, 12, ".safetensors") != 0)
    return false;
  auto digits = [&](size_t at) {
    return std::all_of(s.begin() + at, s.begin() + at + 5, [](unsigned char c) { return std::isdigit(c); });
  };
  return digits(6) && digits(15);
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  AtomicFile out(path);
  out.write(text.data(), text.size());
  out.commit();
}

// Removes the files of an earlier save that the layout just written does not use.
void remove_stale(const std::filesystem::path& dir, bool keep_single, const std::set<std::string>& keep_shards) {
  std::error_code ec;
  if (keep_single) std::filesystem::remove(dir / "model.safetensors.index.json", ec);
  else std::filesystem::remove(dir / "model.safetensors", ec);
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    auto name = entry.path().filename().string();
    if (is_shard_name(name) && !keep_shards.count(name)) std::filesystem::remove(entry.path(), ec);
  }
}
}  // namespace

void require_finite(const std::filesystem::path& where,
                    const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  for (const auto& [name, t] : tensors)
    if (t.defined() && at::isFloatingType(t.scalar_type()) && t.numel() > 0 && !at::isfinite(t).all().item<bool>())
      throw SafetensorsError(where, fmt::format("tensor '{}' holds NaN or inf values: refusing to save a non-finite "
                                                "model (the run diverged)", name));
}

void save_file(const std::filesystem::path& file, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
               const std::map<std::string, std::string>& metadata) {
  check_tensors(file, tensors);
  // Data laid out by element size, largest first (stably, else in the order given), as the Rust crate does:
  // every tensor then starts aligned to its element size, so the reader can always hand out zero-copy views.
  std::vector<const std::pair<std::string, at::Tensor>*> order;
  for (const auto& item : tensors) order.push_back(&item);
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return c10::elementSize(a->second.scalar_type()) > c10::elementSize(b->second.scalar_type());
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto* item : order) {
    const auto& [name, t] = *item;
    uint64_t size = nbytes(t);
    header[name] = {{"dtype", *dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  uint64_t header_len = text.size();

  AtomicFile out(file);
  out.write(&header_len, 8);  // little-endian, checked in read.cpp
  out.write(text.data(), text.size());
  for (const auto* item : order) {
    const at::Tensor& t = item->second;
    // One tensor at a time, so a GPU model is never copied to host memory all at once.
    at::Tensor host = t.detach().to(at::kCPU).contiguous();
    if (host.numel() > 0) out.write(host.data_ptr(), nbytes(host));
  }
  out.commit();
}

void save_checkpoint(const std::filesystem::path& dir, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                     uint64_t max_shard_bytes, const std::map<std::string, std::string>& metadata) {
  if (max_shard_bytes == 0) throw SafetensorsError(dir, "max_shard_bytes must be positive");
  check_tensors(dir, tensors);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw SafetensorsError(dir, fmt::format("cannot create the folder: {}", ec.message()));

  // Greedy packing in the order given, as transformers does.
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const auto& item : tensors) {
    uint64_t size = nbytes(item.second);
    if (!shards.back().empty() && in_shard + size > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(item);
    in_shard += size;
    total += size;
  }

  if (shards.size() == 1) {
    save_file(dir / "model.safetensors", shards[0], metadata);
    remove_stale(dir, /*keep_single=*/true, {});
    return;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  std::set<std::string> written;
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = shard_name(i + 1, shards.size());
    save_file(dir / name, shards[i], metadata);
    written.insert(name);
    for (const auto& item : shards[i]) weight_map[item.first] = name;
  }
  // The index goes last: until it is in place, a reader still sees the previous save.
  nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_text(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  remove_stale(dir, /*keep_single=*/false, written);
}

}  // namespace dschat::safetensors
