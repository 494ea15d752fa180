#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the data section.
//
// Reading memory-maps the file and validates the whole header up front, with the same rules as the Rust crate
// (offsets in bounds, byte counts matching shapes, ranges covering the data section without overlaps or holes),
// so a bad file fails at open() with an error naming the file, the tensor and the problem - never later with an
// out-of-bounds read.
//
// Tensors returned by File::tensor / CheckpointReader::load are zero-copy views of a read-only mapping
// (PROT_READ, MAP_PRIVATE): writing into one in place faults. Clone (or convert) before any in-place update.
// A view keeps its whole file mapped for as long as the view lives, even after the File object is gone.
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dschat/sdk/export.h"

namespace dschat::safetensors {

// what() is "<file>: <problem>"; the problem names the tensor where one is concerned.
class DSCHAT_SDK_API SafetensorsError : public std::runtime_error {
 public:
  SafetensorsError(const std::filesystem::path& file, const std::string& message);
  const std::filesystem::path& file() const { return file_; }

 private:
  std::filesystem::path file_;
};

struct TensorInfo {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;  // byte offsets relative to the start of the data section
  uint64_t end;
  std::filesystem::path file;
};

// "F32" <-> at::kFloat, ... Supported: F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U64 U32 U16 U8 BOOL.
DSCHAT_SDK_API std::optional<at::ScalarType> dtype_from_name(std::string_view name);
DSCHAT_SDK_API std::optional<std::string_view> dtype_name(at::ScalarType dtype);

// One memory-mapped, fully validated .safetensors file. Immutable, safe to share between threads.
class DSCHAT_SDK_API File {
 public:
  struct Mapping;  // the mmap region; private to the implementation

  static std::shared_ptr<File> open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data (offset) order
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // SafetensorsError if absent
  // Zero-copy read-only CPU view (see the note at the top). A tensor whose data is not aligned to its element
  // size in the file (legal, but never written by the reference writers) is returned as an aligned copy.
  at::Tensor tensor(const std::string& name) const;
  at::Tensor tensor(const TensorInfo& info) const;  // info must come from this file's tensors()
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const;

 private:
  File() = default;
  std::filesystem::path path_;
  std::shared_ptr<const Mapping> mapping_;
  uint64_t data_start_ = 0;  // 8 + header length
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A model's weights: a folder holding model.safetensors, or model.safetensors.index.json and its shards,
// or a path to one .safetensors file.
class DSCHAT_SDK_API CheckpointReader {
 public:
  static CheckpointReader open(const std::filesystem::path& path);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // SafetensorsError if absent
  at::Tensor load(const std::string& name) const;         // zero-copy read-only view
  at::Tensor load(const std::string& name, at::ScalarType dtype) const;  // converted copy if dtype differs
  const std::vector<std::shared_ptr<File>>& files() const { return files_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  struct Entry {
    const File* file;
    const TensorInfo* info;
  };
  std::filesystem::path path_;
  std::vector<std::shared_ptr<File>> files_;  // owns what entries_ points into
  std::map<std::string, Entry> entries_;
};

// Throws SafetensorsError naming the first floating tensor that holds NaN or inf. The writers themselves store
// any value bit-exactly; model exports and engine checkpoints call this first, so a diverged run never leaves a
// model or a checkpoint that later stages would reuse.
DSCHAT_SDK_API void require_finite(const std::filesystem::path& where,
                                   const std::vector<std::pair<std::string, at::Tensor>>& tensors);

// Writes one file atomically (to "<file>.tmp-<pid>", fsync, rename, fsync the folder). Tensors are written
// contiguous from CPU memory, ordered by element size (largest first, else in the order given) so that each
// starts aligned and reads back zero-copy; the header is space-padded to a multiple of 8 bytes.
DSCHAT_SDK_API void save_file(const std::filesystem::path& file,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes a model folder the way transformers' save_pretrained does: model.safetensors when everything fits in
// max_shard_bytes, else model-0000i-of-0000N.safetensors + model.safetensors.index.json. Tensors are packed in
// the order given; one larger than max_shard_bytes gets a shard of its own. Files of an earlier save that the
// new layout does not use (a stale index, single file or shards) are removed afterwards, so the reader never
// mixes two saves.
DSCHAT_SDK_API void save_checkpoint(const std::filesystem::path& dir,
                                    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                    uint64_t max_shard_bytes = 5ull << 30,
                                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace dschat::safetensors
