#include "dschat/sdk/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace dschat {

namespace {
[[noreturn]] void fail(const std::string& what, const std::filesystem::path& file) {
  throw std::runtime_error(fmt::format("{} {}: {}", what, file.string(), std::strerror(errno)));
}

void fsync_path(const std::filesystem::path& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) fail("cannot open for fsync", path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail("fsync failed for", path);
}
}  // namespace

std::filesystem::path temporary_path_for(const std::filesystem::path& file) {
  static std::atomic<int> counter{0};
  return file.parent_path() / fmt::format("{}.tmp-{}-{}", file.filename().string(), ::getpid(), counter++);
}

void commit_file(const std::filesystem::path& file, const std::filesystem::path& target) {
  fsync_path(file, false);
  if (::rename(file.c_str(), target.c_str()) != 0) fail(fmt::format("cannot rename {} to", file.string()), target);
  auto folder = target.parent_path().empty() ? std::filesystem::path(".") : target.parent_path();
  fsync_path(folder, true);
}

void write_file_atomic(const std::filesystem::path& file, std::string_view content) {
  if (!file.parent_path().empty()) std::filesystem::create_directories(file.parent_path());
  auto tmp = temporary_path_for(file);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("cannot create", tmp);
  size_t written = 0;
  while (written < content.size()) {
    ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("cannot write", tmp);
    }
    written += static_cast<size_t>(n);
  }
  ::close(fd);
  commit_file(tmp, file);
}

}  // namespace dschat
