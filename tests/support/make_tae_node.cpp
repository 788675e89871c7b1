// Gives a node state directory a small tae global model, as a coordinator's
// push would, for command-line tests of `chorus node adapt`:
//   make_tae_node STATE_DIR [tae|tae-new|dro]
// tae: trained for one epoch on 2,000 Fashion-MNIST training images
// answered by two label-derived "experts" on classes {0..4} and {5..9}.
// tae-new: the same, the second expert on {5..7} only: Bag and Ankle boot
// are classes no expert answered for (a task with them reads out by
// features).
// dro: a 5-way MLP initialisation (the mean of two MLPs trained on the two
// halves of the classes, one epoch each).
#include <torch/torch.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "chorus/core/error.hpp"
#include "chorus/core/fs.hpp"
#include "chorus/fusion/datasets.hpp"
#include "chorus/fusion/dro.hpp"
#include "chorus/fusion/fused_model.hpp"
#include "chorus/fusion/random.hpp"
#include "chorus/fusion/tae.hpp"
#include "chorus/fusion/train.hpp"
#include "chorus/node/service.hpp"

namespace fu = chorus::fusion;

int main(int argc, char** argv) {
  const std::string kind = argc == 3 ? argv[2] : "tae";
  if ((argc != 2 && argc != 3) ||
      (kind != "tae" && kind != "tae-new" && kind != "dro")) {
    std::fprintf(stderr, "usage: make_tae_node STATE_DIR [tae|tae-new|dro]\n");
    return 2;
  }
  try {
    torch::set_num_threads(1);
    auto train = fu::load_fashion_mnist(
        fu::Split::kTrain, chorus::path_or_env({}, "CHORUS_DATA_DIR"));
    auto x = train.images.slice(0, 0, 2000);
    auto y = train.labels.slice(0, 0, 2000);
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    if (kind == "dro") {
      const fu::ModelSpec spec{.arch = "mlp",
                               .input_shape = {1, 28, 28},
                               .num_classes = 5,
                               .hidden = {64}};
      std::vector<torch::Tensor> models;
      for (int half = 0; half < 2; ++half) {
        auto gen = fu::make_generator(1);  // one starting point
        auto m = fu::make_classifier(spec, gen);
        auto rows = y.ge(5 * half).logical_and(y.lt(5 * half + 5)).nonzero();
        rows = rows.flatten();
        fu::train(*m, x.index_select(0, rows),
                  y.index_select(0, rows) - 5 * half,
                  fu::TrainOptions().epochs(1).batch_size(64).lr(2e-3));
        models.push_back(fu::flatten_model(*m));
      }
      auto init = fu::dro_model(
          spec, fu::DroFit{.init = torch::stack(models).mean(0)}, "weights", 2);
      init.attributes["labels"] =
          nlohmann::json(fu::fashion_mnist_class_names()).dump();
      fu::save_fused_model(init, dir / "dro.pt");
      chorus::node::store_global_model(dir, 1, "dro", spec.to_string(),
                                       chorus::read_file(dir / "dro.pt"));
      std::filesystem::remove(dir / "dro.pt");
      return 0;
    }
    fu::TaeData data;
    data.inputs = x;
    for (int half = 0; half < 2; ++half) {
      const std::int64_t lo = 5 * half,
                         hi = half == 1 && kind == "tae-new" ? 8 : lo + 5;
      auto task = torch::zeros({10});
      task.slice(0, lo, hi).fill_(1);
      // The expert's answer: the true class when it is one of its own, its
      // classes uniformly otherwise.
      auto answer =
          task.expand({2000, 10}).clone() / static_cast<double>(hi - lo);
      auto own = y.ge(lo).logical_and(y.lt(hi));
      auto onehot = torch::one_hot(y, 10).to(torch::kFloat32);
      answer.index_put_({own}, onehot.index({own}));
      data.answers.push_back(answer);
      data.tasks.push_back(task);
    }
    // Images, as the coordinator's tae fuser sees Fashion-MNIST: the
    // encoders of the input are convolutional.
    fu::TaeModel model(
        28 * 28, 10, 10,
        fu::TaeOptions()
            .network(
                fu::TaeNetworkOptions().prototypes(30).image_shape({1, 28, 28}))
            .training(fu::TaeTrainingOptions().epochs(1))
            .adaptation(fu::TaeAdaptationOptions().samples(3).steps(20)));
    model.train(data);
    model.set_labels(fu::fashion_mnist_class_names());
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
