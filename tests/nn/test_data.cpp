// Data: the IDX reader on good, truncated and corrupt files; Fashion-MNIST when installed; the
// synthetic sets; deterministic batching; transforms.
#include <catch2/catch.hpp>

#include <limits>

#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "nn/data.hpp"
#include "ops/reduce.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
std::string idx_bytes(const std::vector<std::uint32_t>& dims, const std::vector<unsigned char>& data) {
  std::string s = {0, 0, 8, static_cast<char>(dims.size())};
  for (std::uint32_t d : dims)
    for (int k = 3; k >= 0; --k) s += static_cast<char>((d >> (8 * k)) & 0xff);
  s.append(data.begin(), data.end());
  return s;
}
void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}
std::string temp(const std::string& name) {
  return (fs::temp_directory_path() / fmt::format("tapegrad-{}-{}", ::getpid(), name)).string();
}
}  // namespace

TEST_CASE("read_idx reads gzip and raw files and rejects bad ones", "[nn][data]") {
  const std::string gz = temp("ok.idx.gz"), raw = temp("ok.idx"), bad = temp("bad.idx.gz");
  write_gz(gz, idx_bytes({2, 3}, {1, 2, 3, 4, 5, 255}));
  std::ofstream(raw, std::ios::binary) << idx_bytes({4}, {9, 8, 7, 6});
  const Tensor a = nn::data::read_idx(gz);
  CHECK(a.shape() == Shape{2, 3});
  CHECK(a.to_vector<std::int32_t>() == std::vector<std::int32_t>{1, 2, 3, 4, 5, 255});
  CHECK(nn::data::read_idx(raw).to_vector<std::int32_t>() == std::vector<std::int32_t>{9, 8, 7, 6});
  write_gz(bad, idx_bytes({2, 3}, {1, 2, 3}));
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("is truncated: it ends inside the data (byte 15 of 18)"));
  write_gz(bad, idx_bytes({2}, {1, 2, 3}));
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("has data beyond the 2 bytes its header declares"));
  write_gz(bad, std::string("\x00\x01\x08\x01", 4));
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("not an IDX file"));
  write_gz(bad, std::string("\x00\x00\x0d\x01\x00\x00\x00\x01", 8));
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("only unsigned bytes"));
  write_gz(bad, std::string("\x00\x00\x08", 3));
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("truncated"));
  std::ofstream(bad, std::ios::binary) << std::string("\x1f\x8b\x08\x00garbage", 11);  // a broken gzip stream
  CHECK_THROWS(nn::data::read_idx(bad));
  CHECK_THROWS_WITH(nn::data::read_idx(temp("does-not-exist")), Contains("cannot open"));
  CHECK_THROWS_WITH(nn::data::read_idx(fs::temp_directory_path().string()), Contains("is not a regular file"));
  // A header promising 8.5 GB in a 16-byte file fails on the data it lacks, without reserving it.
  std::ofstream(bad, std::ios::binary) << std::string("\x00\x00\x08\x02\x05\xf5\xe1\x00\x00\x00\x00\x55", 12) << "abcd";
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("is truncated: it ends inside the data"));
  // A gzip file whose trailer (CRC-32, size) is cut off is corrupt, even with all its data there.
  write_gz(gz, idx_bytes({2, 3}, {1, 2, 3, 4, 5, 6}));
  const std::string whole = [&] {
    std::ifstream in(gz, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  for (std::size_t cut : {1, 4, 8}) {
    std::ofstream(bad, std::ios::binary) << whole.substr(0, whole.size() - cut);
    CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("is corrupt after its data: the gzip stream is cut off"));
  }
  // The same for a large file (zlib's gzread let a missing trailer pass when the output filled
  // its buffer), with a second member and trailing garbage.
  std::string big_pixels(3'000'000, '\0');
  for (std::size_t i = 0; i < big_pixels.size(); ++i) big_pixels[i] = static_cast<char>((i * 7919) >> 5);
  write_gz(gz, std::string("\x00\x00\x08\x01\x00\x2d\xc6\xc0", 8) + big_pixels);
  CHECK(nn::data::read_idx(gz).numel() == 3'000'000);
  const std::string big = [&] {
    std::ifstream in(gz, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  std::ofstream(bad, std::ios::binary) << big.substr(0, big.size() - 8);
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("the gzip stream is cut off"));
  std::ofstream(bad, std::ios::binary) << big << "junk";
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("bytes of garbage after its gzip data"));
  fs::remove(gz);
  fs::remove(raw);
  fs::remove(bad);
}

TEST_CASE("Fashion-MNIST loads with the right shapes (when installed)", "[nn][data]") {
  const auto folder = nn::data::find_fashion_mnist();
  if (!folder) {
    WARN("Fashion-MNIST is not installed (dataset-fashion-mnist); skipping");
    return;
  }
  const auto test = nn::data::load_fashion_mnist(*folder, false);
  CHECK(test.images.shape() == Shape{10000, 1, 28, 28});
  CHECK(test.labels.shape() == Shape{10000});
  CHECK(ops::amax(test.images).item() <= 1.0);
  CHECK(ops::amin(test.images).item() >= 0.0);
  CHECK(ops::amax(test.labels).item() == 9);
  CHECK(test.class_names.size() == 10);
}

TEST_CASE("synthetic sets are deterministic and well formed", "[nn][data]") {
  const auto a = nn::data::synthetic_shapes(200, 5), b = nn::data::synthetic_shapes(200, 5);
  CHECK(a.images.shape() == Shape{200, 1, 28, 28});
  CHECK(test::same_bits(a.images, b.images));
  CHECK(test::same_bits(a.labels, b.labels));
  CHECK(ops::amin(a.images).item() >= 0.0);
  CHECK(ops::amax(a.images).item() <= 1.0);
  CHECK(ops::amax(a.labels).item() == 9);
  for (auto pts : {nn::data::two_moons(101, 0.1, 1), nn::data::two_spirals(101, 0.0, 1),
                   nn::data::gaussian_mixture(101, 8, 2.0, 0.1, 1), nn::data::checkerboard(101, 1)}) {
    CHECK(pts.x.shape() == Shape{101, 2});
    CHECK(pts.y.shape() == Shape{101});
  }
  CHECK(test::same_bits(nn::data::two_moons(50, 0.1, 3).x, nn::data::two_moons(50, 0.1, 3).x));
}

TEST_CASE("BatchSampler: deterministic epochs, full coverage, drop_last", "[nn][data]") {
  nn::data::BatchSampler s(10, 4, true, 7);
  CHECK(s.batches_per_epoch() == 3);
  std::vector<std::int64_t> seen;
  for (std::int64_t b = 0; b < 3; ++b)
    for (std::int64_t i : s.batch(0, b).to_vector<std::int64_t>()) seen.push_back(i);
  std::sort(seen.begin(), seen.end());
  CHECK(seen == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  nn::data::BatchSampler s2(10, 4, true, 7);
  CHECK(test::same_bits(s2.batch(1, 2), s.batch(1, 2)));  // depends only on (seed, epoch)
  CHECK_FALSE(test::same_bits(s.batch(0, 0), s.batch(1, 0)));
  CHECK(nn::data::BatchSampler(10, 4, false, 0, true).batches_per_epoch() == 2);
  CHECK(nn::data::BatchSampler(10, 4, false, 0).batch(0, 2).to_vector<std::int64_t>() == std::vector<std::int64_t>{8, 9});
  CHECK_THROWS_WITH(s.batch(0, 3), Contains("batch 3 out of range"));
  CHECK(nn::data::BatchSampler(10, std::numeric_limits<std::int64_t>::max(), false, 0).batches_per_epoch() == 1);  // no overflow
}

TEST_CASE("transforms", "[nn][data]") {
  const Tensor img = arange(0.0, 16.0, 1.0, DType::f32).reshape({1, 1, 4, 4});
  CHECK(nn::data::downsample(img, 2).to_vector<float>() == std::vector<float>{2.5f, 4.5f, 10.5f, 12.5f});
  CHECK(nn::data::pad_to(img, 6).shape() == Shape{1, 1, 6, 6});
  CHECK(nn::data::pad_to(img, 6).at<float>({0, 0, 1, 1}) == 0.0f);
  CHECK(nn::data::normalize(img, 1.0, 2.0).at<float>({0, 0, 0, 3}) == 1.0f);
  Generator gen(1);
  const Tensor flipped = nn::data::random_hflip(img.expand({2, 1, 4, 4}).contiguous(), 1.0, gen);
  CHECK(flipped.at<float>({1, 0, 0, 0}) == 3.0f);
  CHECK_THROWS_WITH(nn::data::downsample(img, 3), Contains("factor 3 does not divide 4x4"));
}
