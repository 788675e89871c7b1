#include "chorus/core/fs.hpp"

#include <sys/stat.h>

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;

namespace {

int count_entries(const fs::path& dir) {
  int n = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

TEST_CASE("fs: write_file_atomic creates, replaces and leaves no temporary") {
  chorus::testing::TempDir dir;
  const fs::path target = dir / "model.pt";

  chorus::write_file_atomic(target, "first");
  CHECK(chorus::read_file(target) == "first");

  std::string big(1 << 20, 'x');
  big[12345] = '\0';  // Binary content survives.
  chorus::write_file_atomic(target, big);
  CHECK(chorus::read_file(target) == big);
  CHECK(count_entries(dir.path()) == 1);
}

TEST_CASE("fs: write_file_atomic applies the requested mode") {
  chorus::testing::TempDir dir;
  const fs::path key = dir / "node.key";
  chorus::write_file_atomic(key, "secret",
                            fs::perms::owner_read | fs::perms::owner_write);
  struct stat st {};
  REQUIRE(::stat(key.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("fs: write_file_atomic into a missing directory is NOT_FOUND") {
  chorus::testing::TempDir dir;
  try {
    chorus::write_file_atomic(dir / "no" / "such" / "file", "x");
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kNotFound);
    CHECK(std::string(e.what()).find("does not exist") != std::string::npos);
  }
  CHECK(count_entries(dir.path()) == 0);
}

TEST_CASE("fs: a failed write keeps the previous file intact") {
  chorus::testing::TempDir dir;
  const fs::path target = dir / "state";
  chorus::write_file_atomic(target, "previous");
  // A directory where the file should go makes the rename fail.
  const fs::path blocked = dir / "blocked";
  fs::create_directory(blocked);
  fs::create_directory(blocked / "child");
  CHECK_THROWS_AS(chorus::write_file_atomic(blocked, "new"), chorus::Error);
  CHECK(chorus::read_file(target) == "previous");
  CHECK(count_entries(dir.path()) == 2);  // state and blocked, no temporary
}

TEST_CASE("fs: read_file of a missing file is NOT_FOUND naming the path") {
  try {
    chorus::read_file("/nonexistent/chorus/file");
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kNotFound);
    CHECK(std::string(e.what()).find("/nonexistent/chorus/file") !=
          std::string::npos);
  }
}
