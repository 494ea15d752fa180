// Reading one .safetensors file: mmap, then validate the whole header before handing out any tensor.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/safetensors.h"
#include "../nesting_limits.h"

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; add byte swapping");

namespace dschat::safetensors {

SafetensorsError::SafetensorsError(const std::filesystem::path& file, const std::string& message)
    : std::runtime_error(fmt::format("{}: {}", file.string(), message)), file_(file) {}

namespace {
constexpr std::array<std::pair<std::string_view, at::ScalarType>, 15> kDtypes{{
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E5M2", at::kFloat8_e5m2},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U64", at::kUInt64},
    {"U32", at::kUInt32},
    {"U16", at::kUInt16},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
}};

// The Rust crate's limit; a real header is a few hundred KB at most, so anything larger is a corrupt length.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

std::string range(uint64_t begin, uint64_t end) { return fmt::format("[{}, {})", begin, end); }
}  // namespace

std::optional<at::ScalarType> dtype_from_name(std::string_view name) {
  for (const auto& [n, t] : kDtypes)
    if (n == name) return t;
  return std::nullopt;
}

std::optional<std::string_view> dtype_name(at::ScalarType dtype) {
  for (const auto& [n, t] : kDtypes)
    if (t == dtype) return n;
  return std::nullopt;
}

struct File::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping(void* a, size_t s) : addr(a), size(s) {}
  ~Mapping() { ::munmap(addr, size); }
  const char* bytes() const { return static_cast<const char*>(addr); }
};

namespace {
using json = nlohmann::json;

std::shared_ptr<const File::Mapping> map_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SafetensorsError(path, fmt::format("cannot open: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw SafetensorsError(path, fmt::format("cannot stat: {}", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw SafetensorsError(path, "not a regular file");
  }
  auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw SafetensorsError(path, fmt::format("file is {} bytes, shorter than the 8-byte header length that every "
                                             "safetensors file starts with (truncated?)",
                                             size));
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (addr == MAP_FAILED) throw SafetensorsError(path, fmt::format("cannot mmap: {}", std::strerror(err)));
  return std::make_shared<const File::Mapping>(addr, size);
}

// Parses the header, refusing duplicate top-level names (nlohmann would silently keep the last one).
json parse_header(const std::filesystem::path& path, const char* begin, const char* end) {
  std::string duplicate;
  json::parser_callback_t reject_duplicates = [&, seen = std::set<std::string>()](
                                                  int depth, json::parse_event_t event, json& parsed) mutable {
    if (depth == 1 && event == json::parse_event_t::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  if (auto deep = limits::json_nesting_excess({begin, static_cast<size_t>(end - begin)}))
    throw SafetensorsError(path, fmt::format("header nests deeper than {} levels (at byte {} of the header); corrupt or "
                                             "not a safetensors file",
                                             limits::kMaxJsonDepth, deep->offset));
  json header;
  try {
    header = json::parse(begin, end, reject_duplicates);
  } catch (const json::exception& e) {
    throw SafetensorsError(path, fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!duplicate.empty())
    throw SafetensorsError(path, fmt::format("header names tensor '{}' more than once (duplicate name)", duplicate));
  if (!header.is_object())
    throw SafetensorsError(path, fmt::format("header is JSON but not an object (it is {})", header.type_name()));
  return header;
}

uint64_t as_offset(const std::filesystem::path& path, const std::string& name, const json& v) {
  if (!v.is_number_unsigned())
    throw SafetensorsError(path, fmt::format("tensor '{}': data_offsets must be two non-negative integers, got {}",
                                             name, v.dump()));
  return v.get<uint64_t>();
}

TensorInfo parse_entry(const std::filesystem::path& path, const std::string& name, const json& entry,
                       uint64_t data_size) {
  auto fail = [&](const std::string& what) { return SafetensorsError(path, fmt::format("tensor '{}': {}", name, what)); };
  if (!entry.is_object()) throw fail(fmt::format("entry must be an object, got {}", entry.type_name()));
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!entry.contains(key)) throw fail(fmt::format("missing \"{}\"", key));

  TensorInfo info{name, at::kFloat, {}, 0, 0, path};
  const auto& dtype = entry["dtype"];
  if (!dtype.is_string()) throw fail(fmt::format("dtype must be a string, got {}", dtype.dump()));
  auto parsed = dtype_from_name(dtype.get_ref<const std::string&>());
  if (!parsed) throw fail(fmt::format("unknown dtype \"{}\"", dtype.get_ref<const std::string&>()));
  info.dtype = *parsed;

  const auto& shape = entry["shape"];
  if (!shape.is_array()) throw fail(fmt::format("shape must be an array of integers, got {}", shape.dump()));
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : shape) {
    if (d.is_number_integer() && !d.is_number_unsigned())
      throw fail(fmt::format("shape {} has a negative dimension", shape.dump()));
    if (!d.is_number_unsigned()) throw fail(fmt::format("shape must be an array of integers, got {}", shape.dump()));
    auto dim = d.get<uint64_t>();
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw fail(fmt::format("shape {} has a dimension too large for int64", shape.dump()));
    overflow |= __builtin_mul_overflow(numel, dim, &numel);
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(info.dtype)), &nbytes);

  const auto& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    throw fail(fmt::format("data_offsets must be [begin, end], got {}", offsets.dump()));
  info.begin = as_offset(path, name, offsets[0]);
  info.end = as_offset(path, name, offsets[1]);
  if (info.begin > info.end)
    throw fail(fmt::format("data_offsets {} has begin > end", range(info.begin, info.end)));
  if (info.end > data_size)
    throw fail(fmt::format("data_offsets {} end past the data section, which is {} bytes", range(info.begin, info.end),
                           data_size));
  if (overflow || nbytes != info.end - info.begin)
    throw fail(fmt::format("data_offsets {} hold {} bytes but {} of shape {} needs {}{}", range(info.begin, info.end),
                           info.end - info.begin, dtype.get_ref<const std::string&>(), shape.dump(),
                           overflow ? std::string("more than 2^64") : std::to_string(nbytes),
                           " (byte count does not match the shape)"));
  return info;
}

// The format requires the ranges to tile the data section exactly: no overlaps, no holes, nothing left over.
void check_coverage(const std::filesystem::path& path, const std::vector<TensorInfo>& tensors, uint64_t data_size) {
  std::vector<const TensorInfo*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->begin, a->end) < std::tie(b->begin, b->end);
  });
  uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin < covered)
      throw SafetensorsError(path, fmt::format("tensors '{}' {} and '{}' {} overlap in the data section",
                                               previous->name, range(previous->begin, previous->end), t->name,
                                               range(t->begin, t->end)));
    if (t->begin > covered)
      throw SafetensorsError(path, fmt::format("hole in the data section: bytes {} (before tensor '{}') belong to no "
                                               "tensor",
                                               range(covered, t->begin), t->name));
    covered = t->end;
    previous = t;
  }
  if (covered != data_size)
    throw SafetensorsError(path, fmt::format("hole in the data section: its last bytes {} belong to no tensor",
                                             range(covered, data_size)));
}
}  // namespace

std::shared_ptr<File> File::open(const std::filesystem::path& path) {
  std::shared_ptr<File> file(new File());
  file->path_ = path;
  file->mapping_ = map_file(path);
  const auto& map = *file->mapping_;

  uint64_t header_len = 0;
  std::memcpy(&header_len, map.bytes(), 8);
  if (header_len > kMaxHeaderBytes)
    throw SafetensorsError(path, fmt::format("header length {} is absurdly large (limit {}); corrupt or not a "
                                             "safetensors file",
                                             header_len, kMaxHeaderBytes));
  if (header_len > map.size - 8)
    throw SafetensorsError(path, fmt::format("header length {} runs past the end of the file ({} bytes; truncated?)",
                                             header_len, map.size));
  file->data_start_ = 8 + header_len;
  const uint64_t data_size = map.size - file->data_start_;

  json header = parse_header(path, map.bytes() + 8, map.bytes() + file->data_start_);
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object())
        throw SafetensorsError(path, fmt::format("__metadata__ must be an object of strings, got {}", entry.type_name()));
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string())
          throw SafetensorsError(path, fmt::format("__metadata__ must map strings to strings, but \"{}\" is {}", key,
                                                   value.dump()));
        file->metadata_.emplace(key, value.get<std::string>());
      }
      continue;
    }
    file->index_.emplace(name, file->tensors_.size());
    file->tensors_.push_back(parse_entry(path, name, entry, data_size));
  }
  // nlohmann keeps keys sorted; present tensors in data order, which is the order they were written in.
  std::stable_sort(file->tensors_.begin(), file->tensors_.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  check_coverage(path, file->tensors_, data_size);
  return file;
}

uint64_t File::file_size() const { return mapping_->size; }

const TensorInfo& File::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw SafetensorsError(path_, fmt::format("no tensor named '{}'", name));
  return tensors_[it->second];
}

at::Tensor File::tensor(const std::string& name) const { return tensor(info(name)); }

at::Tensor File::tensor(const TensorInfo& info) const {
  // Offsets are only trusted when they were validated against this mapping.
  if (tensors_.empty() || &info < tensors_.data() || &info >= tensors_.data() + tensors_.size())
    throw SafetensorsError(path_, fmt::format("TensorInfo for '{}' (from {}) does not belong to this file", info.name,
                                              info.file.string()));
  auto options = at::TensorOptions().dtype(info.dtype).device(at::kCPU);
  if (info.begin == info.end) return at::empty(info.shape, options);
  const char* data = mapping_->bytes() + data_start_ + info.begin;
  if (reinterpret_cast<uintptr_t>(data) % c10::elementSize(info.dtype) != 0) {
    at::Tensor copy = at::empty(info.shape, options);
    std::memcpy(copy.data_ptr(), data, info.end - info.begin);
    return copy;
  }
  // The deleter owns a reference to the mapping, so the view may outlive this File.
  return at::from_blob(const_cast<char*>(data), info.shape, [keep = mapping_](void*) {}, options);
}

}  // namespace dschat::safetensors
