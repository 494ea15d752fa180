#include "hub_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "dschat/sdk/atomic_file.h"

namespace dschat::hub {

namespace fs = std::filesystem;

bool is_commit_hash(const std::string& revision) {
  if (revision.size() != 40) return false;
  for (char c : revision)
    if (!std::isdigit(static_cast<unsigned char>(c)) && (c < 'a' || c > 'f')) return false;
  return true;
}

RepoCache::RepoCache(fs::path cache_dir, const HubId& id)
    : root_(cache_dir / id.folder_name()), locks_(cache_dir / ".locks" / id.folder_name()) {}

std::optional<std::string> RepoCache::commit_for(const std::string& revision) const {
  if (is_commit_hash(revision)) return revision;
  std::ifstream in(root_ / "refs" / revision);
  std::string commit;
  if (!in || !std::getline(in, commit)) return std::nullopt;
  while (!commit.empty() && std::isspace(static_cast<unsigned char>(commit.back()))) commit.pop_back();
  if (!is_commit_hash(commit)) return std::nullopt;
  return commit;
}

void RepoCache::write_ref(const std::string& revision, const std::string& commit) const {
  if (revision == commit) return;
  fs::create_directories((root_ / "refs" / revision).parent_path());
  write_file_atomic(root_ / "refs" / revision, commit);  // no newline, as huggingface_hub writes it
}

bool RepoCache::has_file(const std::string& commit, const std::string& file) const {
  std::error_code ec;
  return fs::is_regular_file(snapshot(commit) / file, ec);
}

bool RepoCache::known_missing(const std::string& commit, const std::string& file) const {
  std::error_code ec;
  return fs::exists(root_ / ".no_exist" / commit / file, ec);
}

void RepoCache::mark_missing(const std::string& commit, const std::string& file) const {
  const fs::path marker = root_ / ".no_exist" / commit / file;
  fs::create_directories(marker.parent_path());
  std::ofstream touch(marker, std::ios::app);
}

void RepoCache::link(const std::string& commit, const std::string& file, const std::string& etag) const {
  const fs::path target = snapshot(commit) / file;
  fs::create_directories(target.parent_path());
  // ../../blobs/<etag> from snapshots/<commit>/, one more ../ per folder level inside the file name.
  const fs::path relative = fs::relative(blob(etag), target.parent_path());
  // Link under a temporary name, then rename over the old entry: readers never see the name missing.
  const fs::path tmp = target.parent_path() / fmt::format(".{}.link-{}", target.filename().string(), getpid());
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_symlink(relative, tmp);
  fs::rename(tmp, target);
}

FileLock::FileLock(const fs::path& file) {
  fs::create_directories(file.parent_path());
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw HubError(fmt::format("cannot open the lock file {}: {}", file.string(), std::strerror(errno)));
  while (::flock(fd_, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    const int err = errno;
    ::close(fd_);
    throw HubError(fmt::format("cannot lock {}: {}", file.string(), std::strerror(err)));
  }
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

}  // namespace dschat::hub
