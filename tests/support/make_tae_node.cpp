// Gives a node state directory a small tae global model, as a coordinator's
// push would, for command-line tests of `chorus node adapt`:
//   make_tae_node STATE_DIR
// The model is trained for one epoch on 2,000 Fashion-MNIST training images
// answered by two label-derived "experts" on classes {0..4} and {5..9}.
#include <torch/torch.h>

#include <cstdio>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/node/service.hpp"

namespace fu = chorus::fusion;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_tae_node STATE_DIR\n");
    return 2;
  }
  try {
    torch::set_num_threads(1);
    auto train = fu::load_fashion_mnist(fu::Split::kTrain);
    auto x = train.images.slice(0, 0, 2000);
    auto y = train.labels.slice(0, 0, 2000);
    fu::TaeData data;
    data.inputs = x;
    for (int half = 0; half < 2; ++half) {
      auto task = torch::zeros({10});
      task.slice(0, 5 * half, 5 * half + 5).fill_(1);
      // The expert's answer: the true class when it is one of its own, its
      // classes uniformly otherwise.
      auto answer = task.expand({2000, 10}).clone() / 5;
      auto own = y.ge(5 * half).logical_and(y.lt(5 * half + 5));
      auto onehot = torch::one_hot(y, 10).to(torch::kFloat32);
      answer.index_put_({own}, onehot.index({own}));
      data.answers.push_back(answer);
      data.tasks.push_back(task);
    }
    fu::TaeModel model(
        28 * 28, 10, 10,
        fu::TaeOptions().epochs(1).prototypes(30).samples(3).adapt_steps(20));
    model.train(data);
    model.set_labels(fu::fashion_mnist_class_names());
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    model.save(dir / "tae.pt");
    chorus::node::store_global_model(dir, 1, "tae", "tae",
                                     chorus::read_file(dir / "tae.pt"));
    std::filesystem::remove(dir / "tae.pt");
  } catch (const chorus::Error& e) {
    std::fprintf(stderr, "make_tae_node: %s\n", chorus::describe(e).c_str());
    return 1;
  }
  return 0;
}
