// bench_data: how long reading Fashion-MNIST's gzip IDX files takes.
//   bench_data [--repeat N] [--json FILE]
// Prints the median wall time per split and writes them as JSON.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/datasets.hpp"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int repeat = 5;
  std::string json_path = "bench_data.json";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--repeat") && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: bench_data [--repeat N] [--json FILE]\n");
      return 2;
    }
  }
  torch::set_num_threads(1);
  try {
    nlohmann::json out;
    out["benchmark"] = "data";
    out["repeat"] = repeat;
    std::printf("%-28s %10s %12s\n", "split", "examples", "median ms");
    for (auto [split, name] :
         {std::pair{chorus::fusion::Split::kTrain, "train"},
          std::pair{chorus::fusion::Split::kTest, "test"}}) {
      std::vector<double> ms;
      std::int64_t n = 0;
      for (int r = 0; r < repeat; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        auto data = chorus::fusion::load_fashion_mnist(
            split, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
        auto t1 = std::chrono::steady_clock::now();
        n = data.size();
        ms.push_back(
            std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
      double med = median(ms);
      std::printf("fashion-mnist/%-14s %10lld %12.1f\n", name,
                  static_cast<long long>(n), med);
      out["results"].push_back({{"dataset", "fashion-mnist"},
                                {"split", name},
                                {"examples", n},
                                {"median_ms", med}});
    }
    chorus::write_file_atomic(json_path, out.dump(2) + "\n");
    std::printf("wrote %s\n", json_path.c_str());
  } catch (const chorus::Error& e) {
    std::fprintf(stderr, "bench_data: %s\n", chorus::describe(e).c_str());
    return 1;
  }
  return 0;
}
