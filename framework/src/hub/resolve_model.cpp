// Hub id -> snapshot folder: from the cache when it holds a complete one, else over huggingface_hub's protocol
// (HEAD .../resolve/<revision>/<file> for the commit, ETag and size; GET, following the redirect to the CDN, into
// blobs/<etag>.incomplete, resumed from its length; checksum; rename to blobs/<etag>; link into the snapshot).
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/hub.h"
#include "file_digest.h"
#include "http_client.h"
#include "hub_cache.h"

namespace dschat {
namespace {

namespace fs = std::filesystem;
using hub::HttpRequest;
using hub::HttpResponse;
using hub::RepoCache;
using hub::TransportError;

// What a complete snapshot holds. Optional files are fetched when the Hub has them and marked in .no_exist when not.
constexpr const char* kConfig = "config.json";
constexpr const char* kWeights = "model.safetensors";
constexpr const char* kWeightsIndex = "model.safetensors.index.json";
const std::vector<std::string> kOptionalFiles = {"generation_config.json", "tokenizer_config.json",
                                                 "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                                 "reward_model.json"};

std::string human_bytes(int64_t bytes) {
  if (bytes < 0) return "unknown size";
  if (bytes < 1000) return fmt::format("{} B", bytes);
  if (bytes < 1000 * 1000) return fmt::format("{:.1f} kB", bytes / 1e3);
  if (bytes < 1000LL * 1000 * 1000) return fmt::format("{:.1f} MB", bytes / 1e6);
  return fmt::format("{:.2f} GB", bytes / 1e9);
}

// Percent-encodes all but URL-safe characters; a file name keeps its '/' (folders in the repository), a revision
// does not ("refs/pr/1" is one path segment).
std::string url_escape(const std::string& text, bool keep_slash) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/'))
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

// W/"abc" or "abc" -> abc, lower-cased (it names a blob file).
std::string normalize_etag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) etag = etag.substr(2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  for (char& c : etag) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return etag;
}

struct FileMeta {
  std::string commit;
  std::string etag;
  int64_t size = -1;
};

// One repository on one endpoint: metadata requests and downloads into its cache folder.
class HubRepo {
 public:
  HubRepo(const HubId& id, const HubSettings& settings)
      : id_(id), settings_(settings), cache_(settings.cache_dir, id) {}

  const RepoCache& cache() const { return cache_; }

  // The file's metadata at `revision`, or nullopt when the Hub says the repository has no such file.
  std::optional<FileMeta> metadata(const std::string& revision, const std::string& file) const {
    std::string url = resolve_url(revision, file);
    HttpResponse response = with_retries(file, [&] { return head_following_relative_redirects(url); });
    const std::string code = response.header("x-error-code");
    if (response.status == 404 && (code == "EntryNotFound" || code.empty())) return std::nullopt;
    if (response.status >= 400) throw HubError(describe_refusal(response, revision, file));
    FileMeta meta;
    meta.commit = response.header("x-repo-commit");
    meta.etag = normalize_etag(response.header("x-linked-etag").empty() ? response.header("etag")
                                                                        : response.header("x-linked-etag"));
    std::string size = response.header("x-linked-size");
    if (size.empty() && response.status < 300) size = response.header("content-length");
    if (!size.empty()) meta.size = std::stoll(size);
    if (!hub::is_commit_hash(meta.commit))
      throw HubError(fmt::format("{}: {} answered for {} without a commit hash (X-Repo-Commit: '{}'): is HF_ENDPOINT "
                                 "a Hugging Face Hub?", id_.str(), settings_.endpoint, file, meta.commit));
    if (meta.etag.empty() || meta.etag.find('/') != std::string::npos || meta.etag.find("..") != std::string::npos)
      throw HubError(fmt::format("{}: {} gave no usable ETag for {} ('{}')", id_.str(), settings_.endpoint, file,
                                 meta.etag));
    return meta;
  }

  // Makes snapshots/<commit>/<file> hold the file described by `meta`, downloading its blob unless present.
  void fetch(const std::string& commit, const std::string& file, const FileMeta& meta) const {
    const fs::path blob = cache_.blob(meta.etag);
    std::error_code ec;
    if (!fs::is_regular_file(blob, ec)) {
      fs::create_directories(blob.parent_path());
      hub::FileLock lock(cache_.lock_file(meta.etag));  // another rank or a transformers process may be on it
      if (!fs::is_regular_file(blob, ec)) download_blob(commit, file, meta);
    }
    cache_.link(commit, file, meta.etag);
  }

 private:
  std::string resolve_url(const std::string& revision, const std::string& file) const {
    return fmt::format("{}/{}/resolve/{}/{}", settings_.endpoint, id_.repo, url_escape(revision, false),
                       url_escape(file, true));
  }

  HttpRequest request(const std::string& url) const {
    HttpRequest r;
    r.url = url;
    r.bearer_token = settings_.token;
    r.timeout_s = settings_.timeout_s;
    return r;
  }

  // The Hub redirects renamed repositories with a relative Location; LFS files redirect to another host, which
  // is the download's business, not metadata's.
  HttpResponse head_following_relative_redirects(std::string url) const {
    for (int hop = 0;; ++hop) {
      HttpResponse response = hub::http_head(request(url));
      const std::string location = response.header("location");
      if (response.status < 300 || response.status >= 400 || location.empty() || location.front() != '/' || hop == 5)
        return response;
      const size_t scheme = settings_.endpoint.find("://");
      const size_t host_end = settings_.endpoint.find('/', scheme == std::string::npos ? 0 : scheme + 3);
      url = settings_.endpoint.substr(0, host_end) + location;
    }
  }

  // Retries transient failures (dropped connections, 429, 5xx) with backoff; gives up at once when the endpoint
  // cannot be reached at all.
  template <class F>
  HttpResponse with_retries(const std::string& file, F&& attempt) const {
    for (int i = 1;; ++i) {
      try {
        HttpResponse response = attempt();
        if ((response.status == 429 || response.status >= 500) && i < settings_.max_attempts) {
          report(fmt::format("[hub] {}: {} answered {} for {}; retrying ({}/{})", id_.str(), settings_.endpoint,
                             response.status, file, i, settings_.max_attempts));
          backoff(i);
          continue;
        }
        return response;
      } catch (const TransportError& e) {
        if (e.unreachable || i >= settings_.max_attempts) throw HubError(unreachable_message(e.message));
        report(fmt::format("[hub] {}: {} ({}); retrying ({}/{})", id_.str(), e.message, file, i, settings_.max_attempts));
        backoff(i);
      }
    }
  }

  void backoff(int attempt) const {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(8000, 500 << (attempt - 1))));
  }

  std::string unreachable_message(const std::string& why) const {
    return fmt::format("{}: cannot reach {} ({}). Without network, a model must already be in the HF cache ({}); "
                       "set HF_HUB_OFFLINE=1 to never try the network",
                       id_.str(), settings_.endpoint, why, cache_.root().string());
  }

  std::string describe_refusal(const HttpResponse& response, const std::string& revision, const std::string& file) const {
    const std::string code = response.header("x-error-code");
    const std::string message = response.header("x-error-message");
    const std::string web = fmt::format("{}/{}", settings_.endpoint, id_.repo);
    if (code == "RepoNotFound")
      return fmt::format("{}: no model of that name on {} ({}){}", id_.str(), settings_.endpoint, web,
                         settings_.token ? "; the token in use may not see it if it is private"
                                         : "; if it is private, set HF_TOKEN");
    if (code == "RevisionNotFound")
      return fmt::format("{}: the model has no revision '{}' on {}", id_.str(), revision, web);
    if (code == "GatedRepo")
      return fmt::format("{}: the model is gated: accept its terms at {} and {}", id_.str(), web,
                         settings_.token ? "check that HF_TOKEN belongs to the account that did"
                                         : "set HF_TOKEN (or `hf auth login`) to a token of that account");
    if (response.status == 401 || response.status == 403)
      return fmt::format("{}: {} refused {} (HTTP {}){}{}", id_.str(), settings_.endpoint, file, response.status,
                         message.empty() ? "" : ": " + message, settings_.token ? "" : "; set HF_TOKEN if it is private");
    return fmt::format("{}: {} answered HTTP {} for {}{}", id_.str(), settings_.endpoint, response.status, file,
                       message.empty() ? "" : ": " + message);
  }

  void report(const std::string& line) const {
    if (settings_.progress) settings_.progress(line);
  }

  // Downloads into blobs/<etag>.incomplete, resuming whatever an earlier attempt (or process) left there. The
  // caller holds the blob's lock.
  void download_blob(const std::string& commit, const std::string& file, const FileMeta& meta) const {
    const fs::path blob = cache_.blob(meta.etag);
    const fs::path partial = fs::path(blob.string() + ".incomplete");
    const std::string url = resolve_url(commit, file);
    const auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    auto file_length = [&] {
      std::error_code ec;
      auto n = fs::file_size(partial, ec);
      return ec ? int64_t{0} : static_cast<int64_t>(n);
    };
    const int64_t resumed_from = file_length();
    report(fmt::format("[hub] {}: downloading {} ({}){}", id_.str(), file, human_bytes(meta.size),
                       resumed_from > 0 ? fmt::format(", resuming at {}", human_bytes(resumed_from)) : ""));
    auto on_progress = [&](int64_t have) {
      auto now = std::chrono::steady_clock::now();
      if (now - last_report < std::chrono::seconds(2)) return;
      last_report = now;
      const double seconds = std::chrono::duration<double>(now - start).count();
      report(fmt::format("[hub] {}: {} {}{} of {}, {:.1f} MB/s", id_.str(), file,
                         meta.size > 0 ? fmt::format("{:.0f}% (", 100.0 * have / meta.size) : "", human_bytes(have),
                         human_bytes(meta.size) + (meta.size > 0 ? ")" : ""), (have - resumed_from) / 1e6 / seconds));
    };
    for (int attempt = 1;; ++attempt) {
      int64_t have = file_length();
      if (meta.size >= 0 && have > meta.size) {  // longer than the file: not a prefix of it
        fs::remove(partial);
        have = 0;
      }
      if (meta.size > 0 && have == meta.size) break;
      std::string failure;
      try {
        HttpResponse response = hub::http_get_to_file(request(url), partial, have, on_progress);
        if (response.status >= 200 && response.status < 300) break;
        if (response.status == 416) {  // the partial file does not fit what the server has: start over
          fs::remove(partial);
          failure = "the server refused to resume (HTTP 416)";
        } else if (response.status == 429 || response.status >= 500) {
          failure = fmt::format("HTTP {}", response.status);
        } else {
          throw HubError(describe_refusal(response, commit, file));
        }
      } catch (const TransportError& e) {
        if (e.unreachable && attempt >= 2) throw HubError(unreachable_message(e.message));
        failure = e.message;
      }
      if (attempt >= settings_.max_attempts)
        throw HubError(fmt::format("{}: downloading {} failed {} times (last: {}); the {} already downloaded stay in "
                                   "{} and the next run resumes from there",
                                   id_.str(), file, attempt, failure, human_bytes(file_length()), partial.string()));
      report(fmt::format("[hub] {}: {} interrupted at {} ({}); resuming ({}/{})", id_.str(), file,
                         human_bytes(file_length()), failure, attempt, settings_.max_attempts));
      backoff(attempt);
    }
    const int64_t got = file_length();
    if (meta.size >= 0 && got != meta.size) {
      fs::remove(partial);
      throw HubError(fmt::format("{}: {} arrived with {} bytes where the Hub announced {}; the partial file was removed",
                                 id_.str(), file, got, meta.size));
    }
    if (auto mismatch = hub::check_against_etag(partial, meta.etag)) {
      fs::remove(partial);
      throw HubError(fmt::format("{}: {} is corrupt ({}); it was removed and nothing was added to the cache",
                                 id_.str(), file, *mismatch));
    }
    fs::permissions(partial, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                 fs::perms::others_read);
    fs::rename(partial, blob);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report(fmt::format("[hub] {}: {} done, {} in {:.1f} s{}", id_.str(), file, human_bytes(got), seconds,
                       meta.etag.size() == 64 ? ", sha256 verified" : meta.etag.size() == 40 ? ", git sha1 verified" : ""));
  }

  HubId id_;
  const HubSettings& settings_;
  RepoCache cache_;
};

std::vector<std::string> shards_of_index(const fs::path& index_file, const std::string& what) {
  nlohmann::json index;
  try {
    std::ifstream in(index_file);
    index = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw HubError(fmt::format("{}: {} is not valid JSON: {}", what, index_file.string(), e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw HubError(fmt::format("{}: {} has no \"weight_map\" object", what, index_file.string()));
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string() || shard.get<std::string>().find("..") != std::string::npos)
      throw HubError(fmt::format("{}: {}: tensor '{}' maps to an unusable shard name {}", what, index_file.string(),
                                 name, shard.dump()));
    shards.insert(shard.get<std::string>());
  }
  return {shards.begin(), shards.end()};
}

// What a cached snapshot lacks of config, weights (every shard) and tokenizer; empty when it is complete.
std::vector<std::string> missing_parts(const RepoCache& cache, const std::string& commit, const std::string& what) {
  std::vector<std::string> missing;
  if (!cache.has_file(commit, kConfig)) missing.push_back(kConfig);
  if (cache.has_file(commit, kWeightsIndex)) {
    for (const auto& shard : shards_of_index(cache.snapshot(commit) / kWeightsIndex, what))
      if (!cache.has_file(commit, shard)) missing.push_back(shard);
  } else if (!cache.has_file(commit, kWeights)) {
    missing.push_back(std::string(kWeights) + " (or " + kWeightsIndex + " and its shards)");
  }
  if (!cache.has_file(commit, "tokenizer.json") &&
      !(cache.has_file(commit, "vocab.json") && cache.has_file(commit, "merges.txt")))
    missing.push_back("tokenizer.json (or vocab.json + merges.txt)");
  return missing;
}

fs::path download_snapshot(const HubId& id, const HubSettings& settings) {
  HubRepo repo(id, settings);
  const RepoCache& cache = repo.cache();
  auto config = repo.metadata(id.revision, kConfig);
  if (!config)
    throw HubError(fmt::format("{}: {} has no config.json for it at revision '{}' (HTTP 404): not a transformers "
                               "model, or HF_ENDPOINT does not point to a Hub",
                               id.str(), settings.endpoint, id.revision));
  const std::string commit = config->commit;  // every later file is asked for at this commit, not the branch
  cache.write_ref(id.revision, commit);
  repo.fetch(commit, kConfig, *config);

  auto need = [&](const std::string& file) -> bool {
    auto meta = repo.metadata(commit, file);
    if (!meta) {
      cache.mark_missing(commit, file);
      return false;
    }
    repo.fetch(commit, file, *meta);
    return true;
  };
  if (!need(kWeights)) {
    if (!need(kWeightsIndex)) {
      const bool has_bin = repo.metadata(commit, "pytorch_model.bin").has_value();
      throw HubError(fmt::format("{}: the model has no {} nor {}{}", id.str(), kWeights, kWeightsIndex,
                                 has_bin ? ": only PyTorch .bin weights, and dschat reads safetensors (convert with "
                                           "transformers: from_pretrained(...).save_pretrained(dir))"
                                         : ""));
    }
    for (const auto& shard : shards_of_index(cache.snapshot(commit) / kWeightsIndex, id.str())) {
      auto meta = repo.metadata(commit, shard);
      if (!meta)
        throw HubError(fmt::format("{}: {} lists the shard {}, which the model does not have", id.str(), kWeightsIndex,
                                   shard));
      repo.fetch(commit, shard, *meta);
    }
  }
  if (!need("tokenizer.json") && !(need("vocab.json") && need("merges.txt")))
    throw HubError(fmt::format("{}: the model has no tokenizer.json (nor vocab.json + merges.txt), which dschat's "
                               "tokenizer reads", id.str()));
  for (const auto& file : kOptionalFiles) need(file);
  return cache.snapshot(commit);
}

}  // namespace

fs::path resolve_hub_model(const HubId& id, const HubSettings& settings) {
  RepoCache cache(settings.cache_dir, id);
  if (auto commit = cache.commit_for(id.revision)) {
    auto missing = missing_parts(cache, *commit, id.str());
    if (missing.empty()) return cache.snapshot(*commit);  // complete: used as is, without asking the network
    if (settings.offline)
      throw HubError(fmt::format("{}: the cached snapshot {} is incomplete (missing: {}) and HF_HUB_OFFLINE=1 forbids "
                                 "downloading the rest; unset HF_HUB_OFFLINE to complete it",
                                 id.str(), cache.snapshot(*commit).string(), fmt::join(missing, ", ")));
  } else if (settings.offline) {
    throw HubError(fmt::format("{}: not in the HF cache (looked for {}{}) and HF_HUB_OFFLINE=1 forbids downloading it; "
                               "unset HF_HUB_OFFLINE, or fetch it where there is network and copy the cache",
                               id.str(), (cache.root() / "refs" / id.revision).string(),
                               hub::is_commit_hash(id.revision) ? " / snapshots/" + id.revision : ""));
  }
  return download_snapshot(id, settings);
}

fs::path resolve_model(const std::string& path_or_id, const HubSettings& settings) {
  std::error_code ec;
  if (fs::exists(path_or_id, ec)) return path_or_id;
  auto id = HubId::parse(path_or_id);
  if (!id)
    throw HubError(fmt::format("'{}' is neither an existing file or folder nor a Hub model id (org/name[@revision])",
                               path_or_id));
  return resolve_hub_model(*id, settings);
}

fs::path resolve_model(const std::string& path_or_id) {
  return resolve_model(path_or_id, HubSettings::from_environment());
}

}  // namespace dschat
