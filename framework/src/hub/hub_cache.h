#pragma once
// One repository's folder in the HF cache, laid out as huggingface_hub lays it out, so transformers and dschat
// read each other's downloads:
//   models--org--name/refs/<revision>                 the commit a branch or tag pointed to when last resolved
//   models--org--name/blobs/<etag>                    file contents, named by their ETag (sha256 or git sha1)
//   models--org--name/blobs/<etag>.incomplete         a download in progress (resumed from its length)
//   models--org--name/snapshots/<commit>/<file>       a relative symlink to ../../blobs/<etag>
//   models--org--name/.no_exist/<commit>/<file>       an empty marker: the Hub said this file does not exist
//   <cache>/.locks/models--org--name/<etag>.lock      flock()ed while one process writes that blob
#include <filesystem>
#include <optional>
#include <string>

#include "dschat/framework/hub.h"

namespace dschat::hub {

bool is_commit_hash(const std::string& revision);  // 40 lower-case hex digits

class RepoCache {
 public:
  RepoCache(std::filesystem::path cache_dir, const HubId& id);

  const std::filesystem::path& root() const { return root_; }
  // The commit `revision` names in the cache: itself when it is a commit hash, else refs/<revision>'s content.
  std::optional<std::string> commit_for(const std::string& revision) const;
  void write_ref(const std::string& revision, const std::string& commit) const;

  std::filesystem::path snapshot(const std::string& commit) const { return root_ / "snapshots" / commit; }
  std::filesystem::path blob(const std::string& etag) const { return root_ / "blobs" / etag; }
  std::filesystem::path lock_file(const std::string& etag) const { return locks_ / (etag + ".lock"); }

  // True when snapshots/<commit>/<file> resolves to a blob that exists (a dangling link is not a file).
  bool has_file(const std::string& commit, const std::string& file) const;
  bool known_missing(const std::string& commit, const std::string& file) const;
  void mark_missing(const std::string& commit, const std::string& file) const;
  // Points snapshots/<commit>/<file> at blobs/<etag> with a relative link, replacing a stale one.
  void link(const std::string& commit, const std::string& file, const std::string& etag) const;

 private:
  std::filesystem::path root_;
  std::filesystem::path locks_;
};

// An exclusive flock() on a lock file, released on destruction (or when the process dies).
class FileLock {
 public:
  explicit FileLock(const std::filesystem::path& file);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace dschat::hub
