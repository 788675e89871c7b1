#pragma once
// What several benchmarks share: medians, a process's memory from /proc,
// and re-running the benchmark's own executable as a child process.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace chorus::bench {

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// kB of a process's "VmRSS:" (resident) or "VmHWM:" (peak) line in
/// /proc/<pid>/status; -1 when it cannot be read.
inline long status_kb(const char* key, const std::string& pid = "self") {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0)
      return std::stol(line.substr(std::strlen(key) + 1));
  }
  return -1;
}

/// Starts this executable again with `args` (args[0] is its name).
inline pid_t spawn_self(const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    std::perror("execv");
    _exit(127);
  }
  return pid;
}

}  // namespace chorus::bench
