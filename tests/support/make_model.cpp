// Writes a freshly initialised (untrained) fused model for command-line
// tests: make_model ALGORITHM ARCH OUT_FILE.
#include <torch/torch.h>

#include <cstdio>

#include "chorus/core/error.hpp"
#include "chorus/fusion/fused_model.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: make_model ALGORITHM ARCH OUT_FILE\n");
    return 2;
  }
  try {
    torch::manual_seed(0);
    chorus::fusion::FusedModel fused;
    fused.algorithm = argv[1];
    fused.spec.arch = argv[2];
    if (fused.algorithm == "foe") {
      fused.spec = {.arch = "mlp",
                    .input_shape = {20},
                    .num_classes = 10,
                    .hidden = {16}};
      fused.attributes["features"] = "logprobs";
    }
    fused.model = chorus::fusion::make_classifier(fused.spec);
    chorus::fusion::save_fused_model(fused, argv[3]);
  } catch (const chorus::Error& e) {
    std::fprintf(stderr, "make_model: %s\n", chorus::describe(e).c_str());
    return 1;
  }
  return 0;
}
