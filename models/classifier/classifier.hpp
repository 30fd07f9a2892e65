// Image classifiers for Fashion-MNIST-sized inputs and the 8x8 digits, and the small feature
// extractors behind FD_clf (the Fréchet distance on classifier features used to score generative models).
#pragma once

#include <string>

#include "nn/conv.hpp"
#include "nn/data.hpp"
#include "nn/linear.hpp"

namespace tg::models::classifier {

enum class Arch {
  mlp,    // 784-512-512-10 with ReLU (the reference MLP)
  cnn,    // conv3x3(1->32)+ReLU+maxpool2, conv3x3(32->64)+ReLU+maxpool2, 3136-128-10 (the reference CNN)
  fdmlp,  // 196-256-128-10 on 14x14 images: the FD_clf feature extractor (spec techniques-A §0.3)
  digits, // 64-128-64-10 on the 8x8 digits (image_size 8): their FD_clf feature extractor (same section)
};
Arch parse_arch(const std::string& name);  // "mlp", "cnn", "fdmlp", "digits"
std::string arch_name(Arch a);

struct Config {
  Arch arch = Arch::mlp;
  std::int64_t image_size = 28;  // input H = W (14 for fdmlp, 8 for digits)
  std::int64_t classes = 10;
};

class Classifier : public nn::Module {
 public:
  explicit Classifier(const Config& config, Generator* gen = nullptr);

  // images [B, 1, S, S] in [0, 1] -> logits [B, classes]
  Tensor operator()(const Tensor& images) const;
  // The penultimate activations [B, F] (the FD_clf features).
  Tensor features(const Tensor& images) const;

  void visit(nn::Visitor& v) override;
  std::string type_name() const override { return "Classifier"; }
  std::string extra_repr() const override { return arch_name(config.arch); }

  Config config;
  nn::Conv2d conv1, conv2;       // cnn
  nn::Linear fc1, fc2, fc3;      // mlp, fdmlp, digits: 3 layers; cnn: fc1, fc2
};

// The classifier input for a batch of images [B, 1, S, S] in [0, 1]: normalised by pixel statistics
// chosen by the image size -- 8x8 inputs get the digits' (x - 0.3053) / 0.3760, all other sizes
// Fashion-MNIST's (x - 0.2860) / 0.3530 -- and average-pooled to the model's size (28 -> 14 for fdmlp).
Tensor preprocess(const Config& config, const Tensor& images);

}  // namespace tg::models::classifier
