// Data: the IDX reader on good, truncated and corrupt files; Fashion-MNIST when installed; the
// digits CSV reader and the digits when fetched; splits; the synthetic sets; deterministic
// batching; transforms.
#include <catch2/catch.hpp>

#include <limits>

#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

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
  // Any other file is refused from its first bytes, before it is read into memory.
  std::ofstream(bad, std::ios::binary) << "step,loss\n1,0.5\n";
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("is neither an IDX file nor gzip-compressed"));
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
  std::ofstream(bad, std::ios::binary).flush();  // an empty file
  CHECK_THROWS_WITH(nn::data::read_idx(bad), Contains("' is empty"));
  fs::remove(gz);
  fs::remove(raw);
  fs::remove(bad);
}

TEST_CASE("load_fashion_mnist checks the headers' dims before inflating the data", "[nn][data]") {
  // A small gzip file declaring 10 million images (7.8 GB) is refused from its header, at once,
  // instead of being inflated; so are other image sizes and label counts.
  const std::string dir = temp("fmnist");
  fs::create_directories(dir);
  const std::string images = dir + "/t10k-images-idx3-ubyte.gz", labels = dir + "/t10k-labels-idx1-ubyte.gz";
  write_gz(images, idx_bytes({10'000'000, 28, 28}, std::vector<unsigned char>(1 << 20, 0)));
  write_gz(labels, idx_bytes({2}, {1, 2}));
  CHECK_THROWS_WITH(nn::data::load_fashion_mnist(dir, false),
                    Contains("t10k-images-idx3-ubyte.gz' declares images [10000000, 28, 28], not N 28x28 images with N <= 100000"));
  write_gz(images, idx_bytes({2, 28, 27}, std::vector<unsigned char>(2 * 28 * 27, 0)));
  CHECK_THROWS_WITH(nn::data::load_fashion_mnist(dir, false), Contains("declares images [2, 28, 27]"));
  write_gz(images, idx_bytes({2, 28, 28}, std::vector<unsigned char>(2 * 28 * 28, 7)));
  write_gz(labels, idx_bytes({3}, {1, 2, 3}));
  CHECK_THROWS_WITH(nn::data::load_fashion_mnist(dir, false), Contains("declares labels [3] for 2 images"));
  write_gz(labels, idx_bytes({2}, {1, 9}));
  const auto d = nn::data::load_fashion_mnist(dir + "/", false);
  CHECK(d.images.shape() == Shape{2, 1, 28, 28});
  CHECK(d.labels.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 9});
  CHECK(d.source == "fashion-mnist:" + dir);
  CHECK_THROWS_WITH(nn::data::load_fashion_mnist("", false), Contains("empty folder name"));
  fs::remove_all(dir);
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
  CHECK(test.levels == 256);
}

namespace {
// One digits CSV line: 64 levels (pixel i has level (i * 7 + seed) % 17) and the label.
std::string digits_line(int seed, int label) {
  std::string line;
  for (int i = 0; i < 64; ++i) line += fmt::format("{},", (i * 7 + seed) % 17);
  return line + std::to_string(label);
}
}  // namespace

TEST_CASE("load_digits reads gzip and plain CSV and rejects malformed lines", "[nn][data]") {
  const std::string gz = temp("digits.csv.gz"), plain = temp("digits.csv"), bad = temp("bad-digits.csv");
  write_gz(gz, digits_line(0, 3) + "\n" + digits_line(5, 9) + "\n" + digits_line(2, 0) + "\n");
  std::ofstream(plain, std::ios::binary) << digits_line(0, 3) << "\r\n" << digits_line(5, 9);  // CRLF, no final newline
  for (const std::string& path : {gz, plain}) {
    const auto d = nn::data::load_digits(path);
    REQUIRE(d.images.shape() == Shape{path == gz ? 3 : 2, 1, 8, 8});
    CHECK(d.levels == 17);
    CHECK(d.source == "digits:" + path);
    CHECK(d.class_names.size() == 10);
    CHECK(d.labels.dtype() == DType::i64);
    CHECK(d.labels.at<std::int64_t>({0}) == 3);
    CHECK(d.labels.at<std::int64_t>({1}) == 9);
    // Pixel (r, c) of sample 1 is level ((8r + c) * 7 + 5) % 17, divided by 16.
    CHECK(d.images.at<float>({1, 0, 2, 3}) == static_cast<float>(((8 * 2 + 3) * 7 + 5) % 17) / 16.0f);
    CHECK(d.images.at<float>({0, 0, 0, 0}) == 0.0f);
  }
  const std::string ok = digits_line(1, 4);
  const std::vector<std::pair<std::string, std::string>> cases{
      {ok + "\n" + ok.substr(0, ok.rfind(',')) + "\n", "line 2: expected 65 comma-separated integers (64 pixel levels and the label), got 64"},
      {ok + ",1\n", "line 1: expected 65 comma-separated integers"},
      {ok + ",\n", "line 1: expected 65 comma-separated integers"},
      {"17," + ok.substr(ok.find(',') + 1) + "\n", "line 1: pixel level 17 is outside 0..16"},
      {ok.substr(0, ok.rfind(',') + 1) + "10\n", "line 1: label 10 is outside 0..9"},
      {"-1," + ok.substr(ok.find(',') + 1) + "\n", "line 1: pixel level -1 is outside 0..16"},
      {"a," + ok.substr(ok.find(',') + 1) + "\n", "line 1: expected 65 comma-separated integers"},
      {ok + "\n\n" + ok + "\n", "line 2: expected 65 comma-separated integers"},
      {"", "holds no samples"},
      // A binary file: its bytes are shown as '?' in the message, not written to the terminal.
      {std::string("\x01\x7f\xff,x\x1b[2J") + "\n", "got '???,x?[2J'"},
  };
  for (const auto& [text, message] : cases) {
    std::ofstream(bad, std::ios::binary | std::ios::trunc) << text;
    CHECK_THROWS_WITH(nn::data::load_digits(bad), Contains("load_digits: '" + bad + "' ") && Contains(message));
  }
  // A gzip file cut inside its stream, and a missing file.
  const std::string whole = [&] {
    std::ifstream in(gz, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  std::ofstream(bad, std::ios::binary | std::ios::trunc) << whole.substr(0, whole.size() / 2);
  CHECK_THROWS_WITH(nn::data::load_digits(bad), Contains("load_digits: '" + bad + "' is corrupt: the gzip stream is cut off"));
  CHECK_THROWS_WITH(nn::data::load_digits(temp("no-digits")), Contains("cannot open"));
  std::ofstream(bad, std::ios::binary | std::ios::trunc) << std::string((std::size_t{1} << 24) + 1, '1');  // not read whole
  CHECK_THROWS_WITH(nn::data::load_digits(bad), Contains("is 16777217 bytes; the digits file is far smaller"));
  fs::remove(gz);
  fs::remove(plain);
  fs::remove(bad);
}

TEST_CASE("the 8x8 digits load as scikit-learn ships them (when fetched)", "[nn][data]") {
  {  // an explicit TAPEGRAD_DIGITS that is not a file is an error, not a silent fallback
    const char* old_env = std::getenv("TAPEGRAD_DIGITS");
    const std::string saved = old_env ? old_env : "";
    ::setenv("TAPEGRAD_DIGITS", "/nonexistent/digits.csv.gz", 1);
    CHECK_THROWS_WITH(nn::data::find_digits(), Contains("TAPEGRAD_DIGITS is '/nonexistent/digits.csv.gz', which is not a file"));
    if (old_env) ::setenv("TAPEGRAD_DIGITS", saved.c_str(), 1);
    else ::unsetenv("TAPEGRAD_DIGITS");
  }
  const auto path = nn::data::find_digits();
  if (!path) {
    WARN("the digits data is not there (scripts/get-data.sh fetches it); skipping");
    return;
  }
  const auto d = nn::data::load_digits(*path);
  REQUIRE(d.images.shape() == Shape{1797, 1, 8, 8});
  // The class sizes of sklearn.datasets.load_digits(), and its first image (a zero).
  std::vector<std::int64_t> counts(10, 0);
  for (std::int64_t y : d.labels.to_vector<std::int64_t>()) ++counts[static_cast<std::size_t>(y)];
  CHECK(counts == std::vector<std::int64_t>{178, 182, 177, 183, 181, 182, 181, 179, 174, 180});
  CHECK(d.labels.at<std::int64_t>({0}) == 0);
  const std::vector<float> first_row{0, 0, 5, 13, 9, 1, 0, 0};
  for (std::int64_t c = 0; c < 8; ++c) CHECK(d.images.at<float>({0, 0, 0, c}) == first_row[static_cast<std::size_t>(c)] / 16.0f);
  CHECK(ops::amax(d.images).item() == 1.0);
  CHECK(ops::amin(d.images).item() == 0.0);
  // The spec's 1500 / 297 split.
  const auto [train, test] = nn::data::random_split(d, 1500, 0);
  CHECK(train.size() == 1500);
  CHECK(test.size() == 297);
  CHECK(test.levels == 17);
}

TEST_CASE("subset and random_split", "[nn][data]") {
  const auto d = nn::data::synthetic_shapes(50, 3, 8);
  const auto [a, b] = nn::data::random_split(d, 20, 7);
  REQUIRE(a.size() == 20);
  REQUIRE(b.size() == 30);
  CHECK(d.levels == 0);  // continuous synthetic pixels
  CHECK(a.source == d.source);
  CHECK(a.class_names == d.class_names);
  // Together the two parts hold every item exactly once: match items by their images.
  const auto all = d.images.reshape({50, -1}).to_vector<float>();
  std::vector<int> seen(50, 0);
  for (const auto* part : {&a, &b}) {
    const auto px = part->images.reshape({part->size(), -1}).to_vector<float>();
    const auto labels = part->labels.to_vector<std::int64_t>();
    for (std::int64_t i = 0; i < part->size(); ++i)
      for (std::int64_t j = 0; j < 50; ++j)
        if (std::equal(px.begin() + i * 64, px.begin() + (i + 1) * 64, all.begin() + j * 64) &&
            labels[static_cast<std::size_t>(i)] == d.labels.at<std::int64_t>({j})) {
          ++seen[static_cast<std::size_t>(j)];
          break;
        }
  }
  CHECK(seen == std::vector<int>(50, 1));
  // Deterministic for a seed, different across seeds.
  CHECK(nn::data::random_split(d, 20, 7).first.labels.to_vector<std::int64_t>() == a.labels.to_vector<std::int64_t>());
  CHECK(nn::data::random_split(d, 20, 8).first.images.to_vector<float>() != a.images.to_vector<float>());
  CHECK(nn::data::random_split(d, 0, 1).first.size() == 0);
  CHECK_THROWS_WITH(nn::data::random_split(d, 51, 1), Contains("random_split: cannot take 51 of the 50 items of 'synthetic-shapes'"));
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
  // The checkerboard's label is its cell: all 8 appear, and each cell is a dark square.
  const auto board = nn::data::checkerboard(400, 2);
  const auto cells = board.y.to_vector<std::int64_t>();
  CHECK(std::set<std::int64_t>(cells.begin(), cells.end()).size() == 8);
  const auto xy = board.x.to_vector<float>();
  for (std::size_t i = 0; i < cells.size(); ++i) {  // within the dark cell (row, col), row + col even
    const std::int64_t row = cells[i] / 2, col = 2 * (cells[i] % 2) + row % 2;
    CHECK((row + col) % 2 == 0);
    CHECK(std::fabs(xy[2 * i] - (-1.5 + static_cast<double>(col))) <= 0.5 + 1e-6);
    CHECK(std::fabs(xy[2 * i + 1] - (-1.5 + static_cast<double>(row))) <= 0.5 + 1e-6);
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
  CHECK_THROWS_WITH(nn::data::BatchSampler(10, 11, false, 0, true), Contains("leaves no batch per epoch"));
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
