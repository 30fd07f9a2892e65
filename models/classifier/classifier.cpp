#include "models/classifier/classifier.hpp"

#include "ops/conv.hpp"
#include "ops/elementwise.hpp"

namespace tg::models::classifier {

Arch parse_arch(const std::string& name) {
  if (name == "mlp") return Arch::mlp;
  if (name == "cnn") return Arch::cnn;
  if (name == "fdmlp") return Arch::fdmlp;
  if (name == "digits") return Arch::digits;
  TG_FAIL("classifier: unknown model '{}' (expected mlp, cnn, fdmlp or digits)", name);
}

std::string arch_name(Arch a) {
  switch (a) {
    case Arch::mlp: return "mlp";
    case Arch::cnn: return "cnn";
    case Arch::fdmlp: return "fdmlp";
    case Arch::digits: return "digits";
  }
  return "?";
}

Classifier::Classifier(const Config& c, Generator* gen) : config(c) {
  const nn::LinearOptions lin{.gen = gen};
  const std::int64_t pixels = c.image_size * c.image_size;
  switch (c.arch) {
    case Arch::mlp:
      fc1 = nn::Linear(pixels, 512, lin);
      fc2 = nn::Linear(512, 512, lin);
      fc3 = nn::Linear(512, c.classes, lin);
      break;
    case Arch::cnn:
      TG_CHECK(c.image_size % 4 == 0, "classifier: the CNN needs an image size divisible by 4, got {}", c.image_size);
      conv1 = nn::Conv2d(1, 32, 3, {.padding = {1, 1}, .gen = gen});
      conv2 = nn::Conv2d(32, 64, 3, {.padding = {1, 1}, .gen = gen});
      fc1 = nn::Linear(64 * (c.image_size / 4) * (c.image_size / 4), 128, lin);
      fc2 = nn::Linear(128, c.classes, lin);
      break;
    case Arch::fdmlp:
      fc1 = nn::Linear(pixels, 256, lin);
      fc2 = nn::Linear(256, 128, lin);
      fc3 = nn::Linear(128, c.classes, lin);
      break;
    case Arch::digits:
      TG_CHECK(c.image_size == 8, "classifier: the digits model takes 8x8 images (image_size = 8), got image_size {}", c.image_size);
      fc1 = nn::Linear(pixels, 128, lin);
      fc2 = nn::Linear(128, 64, lin);
      fc3 = nn::Linear(64, c.classes, lin);
      break;
  }
}

Tensor Classifier::features(const Tensor& x) const {
  const std::int64_t B = x.shape()[0];
  switch (config.arch) {
    case Arch::mlp:
    case Arch::fdmlp:
    case Arch::digits: {
      const Tensor h1 = ops::relu(fc1(x.reshape({B, -1})));  // [B, 512 | 256 | 128]
      return ops::relu(fc2(h1));                             // [B, 512 | 128 | 64]
    }
    case Arch::cnn: {
      const Tensor c1 = ops::max_pool2d(ops::relu(conv1(x)), {2, 2});   // [B, 32, S/2, S/2]
      const Tensor c2 = ops::max_pool2d(ops::relu(conv2(c1)), {2, 2});  // [B, 64, S/4, S/4]
      return ops::relu(fc1(c2.reshape({B, -1})));                       // [B, 128]
    }
  }
  return x;
}

Tensor Classifier::operator()(const Tensor& x) const {
  TG_CHECK(x.dim() == 4 && x.shape()[1] == 1 && x.shape()[2] == config.image_size && x.shape()[3] == config.image_size,
           "classifier: expected images [B, 1, {}, {}], got {}", config.image_size, config.image_size, x.shape());
  const Tensor f = features(x);
  return config.arch == Arch::cnn ? fc2(f) : fc3(f);  // [B, classes]
}

void Classifier::visit(nn::Visitor& v) {
  if (config.arch == Arch::cnn) {
    v.module("conv1", conv1);
    v.module("conv2", conv2);
    v.module("fc1", fc1);
    v.module("fc2", fc2);
  } else {
    v.module("fc1", fc1);
    v.module("fc2", fc2);
    v.module("fc3", fc3);
  }
}

Tensor preprocess(const Config& config, const Tensor& images) {
  // The data set's pixel statistics, told apart by the image size: 8x8 are the digits.
  TG_CHECK(images.defined() && images.dim() == 4, "classifier: expected images [B, 1, S, S], got {}",
           images.defined() ? images.shape() : Shape{});
  const bool digits = images.shape()[2] == 8;
  const Tensor x = nn::data::normalize(images, digits ? 0.3053 : 0.2860, digits ? 0.3760 : 0.3530);
  if (config.image_size == images.shape()[2]) return x;
  TG_CHECK(images.shape()[2] % config.image_size == 0, "classifier: cannot resize {} to {}x{}", images.shape(),
           config.image_size, config.image_size);
  return nn::data::downsample(x, images.shape()[2] / config.image_size);
}

}  // namespace tg::models::classifier
