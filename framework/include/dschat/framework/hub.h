#pragma once
// Hugging Face Hub model ids wherever a model folder is accepted: `org/name[@revision]` resolves to a snapshot
// folder of the cache transformers uses (so the two share downloads), fetching what is missing over HTTPS.
//
//   resolve_model("facebook/opt-125m")          -> ~/.cache/huggingface/hub/models--facebook--opt-125m/snapshots/<sha>
//   resolve_model("runs/quickstart/sft/final")  -> that folder, untouched (an existing path always wins)
//
// Cache layout (huggingface_hub's): models--org--name/{refs/<revision>, snapshots/<commit>/<file> -> ../../blobs/
// <etag>, blobs/<etag>, .no_exist/<commit>/<file>}; locks in <cache>/.locks/models--org--name/<etag>.lock.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dschat {

// Bad ids, missing models, network and checksum failures: the message names the id, the file and what to do.
class HubError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where and how to reach the Hub, read from the environment huggingface_hub reads.
struct HubSettings {
  std::filesystem::path cache_dir;   // HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, ...
  std::string endpoint;              // HF_ENDPOINT, else https://huggingface.co
  std::optional<std::string> token;  // HF_TOKEN, else the file HF_TOKEN_PATH or HF_HOME/token
  bool offline = false;              // HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) = 1/true/yes/on
  int64_t timeout_s = 30;            // connect and stall timeout of each request (HF_HUB_DOWNLOAD_TIMEOUT)
  int max_attempts = 5;              // tries per file; each retry resumes the partial file
  // Progress lines ("[hub] org/name: model.safetensors 45% of 270 MB, 12 MB/s"); default: stderr.
  std::function<void(const std::string&)> progress;

  static HubSettings from_environment();
};

struct HubId {
  std::string repo;      // "org/name"
  std::string revision;  // "main", a branch or tag, or a 40-hex commit

  // "org/name" or "org/name@revision"; nullopt when `text` does not have that shape.
  static std::optional<HubId> parse(std::string_view text);
  std::string folder_name() const;  // "models--org--name"
  std::string str() const;          // as written, "org/name@rev" or "org/name"
};

// An existing file or folder is returned as is; otherwise `path_or_id` must be a Hub id, resolved to a complete
// snapshot (config.json, the safetensors weights with every shard of their index, the tokenizer files), from the
// cache when it holds one and else downloaded. Throws HubError saying why it cannot.
std::filesystem::path resolve_model(const std::string& path_or_id, const HubSettings& settings);
std::filesystem::path resolve_model(const std::string& path_or_id);  // settings from the environment
std::filesystem::path resolve_hub_model(const HubId& id, const HubSettings& settings);

}  // namespace dschat
