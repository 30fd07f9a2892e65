// Data: readers (IDX, e.g. Fashion-MNIST; the 8x8 digits CSV), built-in synthetic sets (2-D toys, procedurally drawn
// shapes), deterministic shuffling and batching, and simple transforms.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/random.hpp"
#include "core/tensor.hpp"

namespace tg::nn::data {

// A labelled image set: images [N, C, H, W] f32 in [0, 1], labels [N] i64.
struct ImageDataset {
  Tensor images;
  Tensor labels;
  std::vector<std::string> class_names;
  std::string source;  // where it came from ("fashion-mnist:/usr/share/...", "synthetic-shapes")
  // Quantisation levels of the stored pixels, for dequantisation and bits/dim: 256 for 8-bit
  // images, 17 for the digits, 0 for continuous values (the synthetic sets).
  std::int64_t levels = 0;
  std::int64_t size() const { return images.shape()[0]; }
};

// Reads an IDX file of unsigned bytes (gzip-compressed or raw) into an i32 tensor of the file's
// dims. Validates the magic number, the dims and the data length, and raises a clear error for
// truncated, oversized or corrupt files. check_dims, when given, sees the dims the header declares
// before any data is read (and may throw): a loader that knows its shapes refuses a bad file at
// once instead of after inflating it.
Tensor read_idx(const std::string& path, const std::function<void(const Shape&)>& check_dims = {});

// The folder of the Fashion-MNIST IDX files: $TAPEGRAD_FASHION_MNIST if set, else the Debian
// package's /usr/share/datasets/fashion-mnist; nullopt if the files are not there.
std::optional<std::string> find_fashion_mnist();
const std::vector<std::string>& fashion_mnist_classes();
// train = the 60 000-image training split, else the 10 000-image test split: images [N, 1, 28, 28]
// (files of that format with at most 100 000 images are read too).
ImageDataset load_fashion_mnist(const std::string& folder, bool train);

// The 8x8 handwritten digits (the UCI optdigits test set, 1797 images, as scikit-learn ships it in
// digits.csv.gz: 64 levels 0..16 and the label per line). The file: $TAPEGRAD_DIGITS if set (an
// error if it is not a file), else
// $XDG_DATA_HOME/tapegrad/digits.csv.gz (default ~/.local/share/tapegrad, where
// scripts/get-data.sh puts it), else python3-sklearn's copy; nullopt if none is there.
std::optional<std::string> find_digits();
// images [N, 1, 8, 8] f32 = level / 16 in [0, 1], labels [N] i64, levels = 17. Gzip or plain CSV;
// every line is checked (65 integers in range), errors name the file and the line.
ImageDataset load_digits(const std::string& path);

// The items `indices` (i64 [K]) of a dataset, as a dataset with the same names, source and levels.
ImageDataset subset(const ImageDataset& d, const Tensor& indices);
// A seeded random split into the first `first` items of a permutation and the rest (the digits'
// 1500 / 297 train / test split: random_split(digits, 1500, seed)).
std::pair<ImageDataset, ImageDataset> random_split(const ImageDataset& d, std::int64_t first, std::uint64_t seed);

// A synthetic stand-in with the same shape as Fashion-MNIST: n 28x28 grey images of 10 classes of
// procedurally drawn shapes (circle, square, triangle, cross, ...), randomly placed, scaled and
// noised. Deterministic for a seed.
ImageDataset synthetic_shapes(std::int64_t n, std::uint64_t seed, std::int64_t size = 28);
const std::vector<std::string>& synthetic_shape_classes();

// 2-D toy sets: points x [n, 2] f32 and labels y [n] i64.
struct Points {
  Tensor x;
  Tensor y;
};
Points two_moons(std::int64_t n, double noise, std::uint64_t seed);
Points two_spirals(std::int64_t n, double noise, std::uint64_t seed);
Points gaussian_mixture(std::int64_t n, std::int64_t modes, double radius, double std, std::uint64_t seed);
Points checkerboard(std::int64_t n, std::uint64_t seed);  // y: which of the 8 dark cells (0..7)

// Deterministic mini-batches: the order of an epoch depends only on (seed, epoch), so a resumed
// run sees exactly the batches the uninterrupted run would have.
class BatchSampler {
 public:
  BatchSampler(std::int64_t dataset_size, std::int64_t batch_size, bool shuffle, std::uint64_t seed,
               bool drop_last = false);
  std::int64_t batches_per_epoch() const;
  // Indices (i64) of batch `b` of epoch `epoch`.
  Tensor batch(std::int64_t epoch, std::int64_t b) const;

 private:
  std::int64_t n_, batch_;
  bool shuffle_, drop_last_;
  std::uint64_t seed_;
  mutable std::int64_t cached_epoch_ = -1;
  mutable Tensor order_;
};

// Rows `indices` of a dataset: images [B, C, H, W], labels [B].
std::pair<Tensor, Tensor> gather_batch(const ImageDataset& d, const Tensor& indices);

// (x - mean) / std.
Tensor normalize(const Tensor& images, double mean, double std);
// Average-pools images [N, C, H, W] by an integer factor (28x28 -> 14x14 with factor 2).
Tensor downsample(const Tensor& images, std::int64_t factor);
// Zero-pads images [N, C, H, W] symmetrically to size x size (28 -> 32).
Tensor pad_to(const Tensor& images, std::int64_t size);
// Flips each image left-right with probability p (per image, from gen).
Tensor random_hflip(const Tensor& images, double p, Generator& gen);

}  // namespace tg::nn::data
