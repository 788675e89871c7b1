#include "chorus/core/fs.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "chorus/core/error.hpp"

namespace chorus {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail_errno(std::string_view what, const fs::path& path,
                             int err) {
  fail(err == ENOENT ? Code::kNotFound : Code::kInternal, "{} '{}': {}", what,
       path.string(), std::strerror(err));
}

// Closes the descriptor and removes the temporary file unless released.
class TempFile {
 public:
  explicit TempFile(fs::path path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_ < 0) fail_errno("cannot create", path_, errno);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!released_) ::unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  const fs::path& path() const { return path_; }
  void close() {
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail_errno("cannot close", path_, errno);
  }
  void release() { released_ = true; }

 private:
  fs::path path_;
  int fd_ = -1;
  bool released_ = false;
};

std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}", rng());
}

}  // namespace

void write_file_atomic(const fs::path& path, std::string_view bytes,
                       fs::perms mode) {
  fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    fail(Code::kNotFound, "cannot write '{}': directory '{}' does not exist",
         path.string(), dir.string());
  }
  TempFile tmp(dir / fmt::format(".{}.tmp-{}", path.filename().string(),
                                 random_suffix()));
  const char* data = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(tmp.fd(), data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("cannot write", tmp.path(), errno);
    }
    data += n;
    left -= static_cast<std::size_t>(n);
  }
  if (::fchmod(tmp.fd(), static_cast<mode_t>(mode)) != 0) {
    fail_errno("cannot chmod", tmp.path(), errno);
  }
  if (::fsync(tmp.fd()) != 0) fail_errno("cannot fsync", tmp.path(), errno);
  tmp.close();
  if (::rename(tmp.path().c_str(), path.c_str()) != 0) {
    fail_errno("cannot rename onto", path, errno);
  }
  tmp.release();
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // Best effort: the data itself is already durable.
    ::close(dfd);
  }
}

std::string read_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    fail(Code::kNotFound, "cannot open '{}': no such file", path.string());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(Code::kInternal, "cannot open '{}'", path.string());
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) fail(Code::kInternal, "cannot read '{}'", path.string());
  return std::move(out).str();
}

std::optional<std::filesystem::path> path_or_env(
    const std::filesystem::path& configured, const char* variable) {
  if (!configured.empty()) return configured;
  if (variable == nullptr) return std::nullopt;
  if (const char* env = std::getenv(variable); env && *env) {
    return std::filesystem::path(env);
  }
  return std::nullopt;
}

}  // namespace chorus
