// A model folder's weights: one file, or an index that maps each tensor name to one of several shards.
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/safetensors.h"

namespace dschat::safetensors {
namespace {
using json = nlohmann::json;

constexpr uint64_t kMaxIndexBytes = 100'000'000;

json read_index(const std::filesystem::path& index_path) {
  std::error_code ec;
  auto size = std::filesystem::file_size(index_path, ec);
  if (ec) throw SafetensorsError(index_path, fmt::format("cannot read: {}", ec.message()));
  if (size > kMaxIndexBytes)
    throw SafetensorsError(index_path, fmt::format("index is {} bytes, absurdly large for an index", size));
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw SafetensorsError(index_path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  json index;
  try {
    index = json::parse(text.str());
  } catch (const json::exception& e) {
    throw SafetensorsError(index_path, fmt::format("index is not valid JSON: {}", e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw SafetensorsError(index_path, "index must be a JSON object with a \"weight_map\" object");
  return index;
}
}  // namespace

CheckpointReader CheckpointReader::open(const std::filesystem::path& path) {
  CheckpointReader reader;
  reader.path_ = path;
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) throw SafetensorsError(path, "no such file or folder");

  auto add_all = [&](std::shared_ptr<File> file) {
    for (const auto& info : file->tensors()) reader.entries_[info.name] = Entry{file.get(), &info};
    reader.files_.push_back(std::move(file));
  };

  if (!std::filesystem::is_directory(status)) {
    add_all(File::open(path));
    return reader;
  }
  auto index_path = path / "model.safetensors.index.json";
  if (!std::filesystem::exists(index_path)) {
    auto single = path / "model.safetensors";
    if (!std::filesystem::exists(single))
      throw SafetensorsError(path, "folder has neither model.safetensors nor model.safetensors.index.json");
    add_all(File::open(single));
    return reader;
  }

  json index = read_index(index_path);
  std::map<std::string, const File*> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      throw SafetensorsError(index_path, fmt::format("weight_map[\"{}\"] must be a shard file name, got {}", name,
                                                     shard.dump()));
    const auto& shard_name = shard.get_ref<const std::string&>();
    std::filesystem::path relative(shard_name);
    // Shards live in the folder itself; an index must not point the reader elsewhere.
    if (relative.empty() || relative.is_absolute() || relative.filename() != relative)
      throw SafetensorsError(index_path, fmt::format("weight_map[\"{}\"]: shard \"{}\" is not a file name in the "
                                                     "checkpoint folder",
                                                     name, shard_name));
    auto it = shards.find(shard_name);
    if (it == shards.end()) {
      auto shard_path = path / relative;
      if (!std::filesystem::exists(shard_path))
        throw SafetensorsError(index_path, fmt::format("shard {} (holding tensor '{}') is missing: no file {}",
                                                       shard_name, name, shard_path.string()));
      auto file = File::open(shard_path);
      it = shards.emplace(shard_name, file.get()).first;
      reader.files_.push_back(std::move(file));
    }
    if (!it->second->contains(name))
      throw SafetensorsError(index_path, fmt::format("weight_map puts tensor '{}' in shard {}, which has no such tensor",
                                                     name, shard_name));
    reader.entries_[name] = Entry{it->second, &it->second->info(name)};
  }
  return reader;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw SafetensorsError(path_, fmt::format("checkpoint has no tensor named '{}'", name));
  return *it->second.info;
}

at::Tensor CheckpointReader::load(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw SafetensorsError(path_, fmt::format("checkpoint has no tensor named '{}'", name));
  return it->second.file->tensor(*it->second.info);
}

at::Tensor CheckpointReader::load(const std::string& name, at::ScalarType dtype) const {
  at::Tensor view = load(name);
  return view.scalar_type() == dtype ? view : view.to(dtype);
}

}  // namespace dschat::safetensors
