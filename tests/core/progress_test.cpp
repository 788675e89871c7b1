#include "chorus/core/progress.hpp"

#include <fcntl.h>
#include <unistd.h>

#include "chorus/core/fs.hpp"
#include "support/doctest.hpp"
#include "support/temp_dir.hpp"

namespace progress = chorus::progress;

TEST_CASE("progress: a bar with a total shows fill, percentage, rate, ETA") {
  const auto line = progress::render("train node-0", 250, 1000, "examples", 5.0,
                                     "loss 0.5", 0);
  CHECK(line ==
        "train node-0 [#####---------------]  25% 250/1000 examples 50/s "
        "ETA 15s  loss 0.5");
  // Done: no ETA, the elapsed time instead; never more than 100%.
  const auto done = progress::render("x", 1200, 1000, "", 62.0, "", 0);
  CHECK(done.find("[####################] 100%") != std::string::npos);
  CHECK(done.find("ETA") == std::string::npos);
  CHECK(done.find("1m02s") != std::string::npos);
}

TEST_CASE("progress: without a total there is no bar, percentage or ETA") {
  CHECK(progress::render("push", 12345, 0, "bytes", 2.0, "", 0) ==
        "push 12.3k bytes 6172/s 2s");
  // A status line: no count at all, just the elapsed time and the detail.
  CHECK(progress::render("round 1/3", 0, 0, "", 0.0, "foe: query", 0) ==
        "round 1/3 0s  foe: query");
}

TEST_CASE("progress: a line never exceeds the width it is given") {
  const auto line = progress::render(std::string(200, 'n'), 1, 2, "inputs", 1.0,
                                     "detail", 40);
  CHECK(line.size() == 40);
}

TEST_CASE("progress: compact counts and durations") {
  CHECK(progress::compact(0) == "0");
  CHECK(progress::compact(2.5) == "2.5");
  CHECK(progress::compact(9999) == "9999");
  CHECK(progress::compact(12345) == "12.3k");
  CHECK(progress::compact(123456) == "123k");
  CHECK(progress::compact(4.5e6) == "4.5M");
  CHECK(progress::compact(2e9) == "2.0G");
  CHECK(progress::duration(0.4) == "0s");
  CHECK(progress::duration(59) == "59s");
  CHECK(progress::duration(185) == "3m05s");
  CHECK(progress::duration(3720) == "1h02m");
  CHECK(progress::duration(-1) == "?");
}

TEST_CASE("progress: off a terminal, bars draw nothing and print is plain") {
  // ctest runs the suite with stderr on a pipe or a file.
  REQUIRE_FALSE(::isatty(STDERR_FILENO));
  chorus::testing::TempDir dir;
  const auto file = dir / "stderr.txt";
  const int saved = ::dup(STDERR_FILENO);
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  REQUIRE(fd >= 0);
  ::dup2(fd, STDERR_FILENO);
  {
    progress::Bar bar("train", 100, "examples");
    bar.update(50, "loss 1.0");
    progress::println("trained {} in {:.1f} s", "node-0", 1.25);
    bar.advance(50);
  }
  progress::print("no newline");
  ::dup2(saved, STDERR_FILENO);
  ::close(fd);
  ::close(saved);
  CHECK_FALSE(progress::enabled());
  CHECK(chorus::read_file(file) == "trained node-0 in 1.2 s\nno newline\n");
}
