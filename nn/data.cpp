#include "nn/data.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <numbers>
#include <string>
#include <string_view>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "nn/checkpoint.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/shape.hpp"

namespace tg::nn::data {

// ---- IDX ------------------------------------------------------------------------------------------------------
namespace {

// The bytes of a raw or gzip-compressed file, read on demand. The compressed file is read whole
// (datasets are tens of MB), the output is inflated as it is asked for: a header that promises
// gigabytes costs nothing until they arrive. finish() requires the end of every gzip member, with
// its trailer (CRC-32, size) verified by zlib, and no bytes beyond the data.
class ByteSource {
 public:
  ByteSource(const char* op, const std::string& path, std::string file) : op_(op), path_(path), file_(std::move(file)) {
    gzip_ = file_.size() >= 2 && static_cast<unsigned char>(file_[0]) == 0x1f && static_cast<unsigned char>(file_[1]) == 0x8b;
    if (gzip_) {
      TG_CHECK(inflateInit2(&z_, 16 + MAX_WBITS) == Z_OK, "{}: zlib could not start for '{}'", op_, path_);
      z_.next_in = reinterpret_cast<Bytef*>(file_.data());
      z_.avail_in = static_cast<uInt>(std::min<std::size_t>(file_.size(), std::numeric_limits<uInt>::max()));
      fed_ = z_.avail_in;
    }
  }
  ~ByteSource() {
    if (gzip_) inflateEnd(&z_);
  }
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  // Fills n bytes; `what` names the part of the file in errors.
  void read(unsigned char* out, std::size_t n, const char* what) {
    const std::size_t start = pos_;
    if (!gzip_) {
      TG_CHECK(file_.size() - pos_ >= n, "{}: '{}' is truncated: it ends inside the {} (byte {} of {})", op_, path_,
               what, file_.size(), pos_ + n);
      std::memcpy(out, file_.data() + pos_, n);
      pos_ += n;
      return;
    }
    std::size_t done = 0;
    while (done < n) {
      TG_CHECK(!ended_ || next_member(), "{}: '{}' is truncated: it ends inside the {} (byte {} of {})", op_, path_,
               what, start + done, start + n);
      const std::size_t want = std::min<std::size_t>(n - done, std::size_t{1} << 30);
      z_.next_out = out + done;
      z_.avail_out = static_cast<uInt>(want);
      const int r = step();
      done += want - z_.avail_out;
      if (r == Z_BUF_ERROR && z_.avail_out == want)  // no progress: the input ran out mid-stream
        TG_FAIL("{}: '{}' is truncated: it ends inside the {} (byte {} of {})", op_, path_, what, start + done, start + n);
    }
    pos_ += n;
  }

  // Everything from the current position to the end (of every gzip member), at most `limit` bytes.
  std::string read_to_end(std::size_t limit) {
    if (!gzip_) {
      TG_CHECK(file_.size() - pos_ <= limit, "{}: '{}' is larger than {} bytes", op_, path_, limit);
      std::string rest = file_.substr(pos_);
      pos_ = file_.size();
      return rest;
    }
    std::string out;
    std::vector<unsigned char> buf(std::size_t{1} << 16);
    while (!ended_ || next_member()) {
      z_.next_out = buf.data();
      z_.avail_out = static_cast<uInt>(buf.size());
      const int r = step();
      const std::size_t got = buf.size() - z_.avail_out;
      TG_CHECK(!(r == Z_BUF_ERROR && got == 0), "{}: '{}' is corrupt: the gzip stream is cut off (no trailer)", op_, path_);
      out.append(reinterpret_cast<const char*>(buf.data()), got);
      TG_CHECK(out.size() <= limit, "{}: '{}' inflates to more than {} bytes", op_, path_, limit);
    }
    pos_ += out.size();
    return out;
  }

  // After the data: nothing else may follow, and every gzip member must be complete.
  void finish(std::uint64_t declared) {
    if (!gzip_) {
      TG_CHECK(pos_ == file_.size(), "{}: '{}' has data beyond the {} bytes its header declares (or is corrupt)", op_, path_, declared);
      return;
    }
    unsigned char extra;
    while (!ended_ || next_member()) {
      z_.next_out = &extra;
      z_.avail_out = 1;
      const int r = step();
      TG_CHECK(z_.avail_out == 1, "{}: '{}' has data beyond the {} bytes its header declares (or is corrupt)", op_, path_, declared);
      TG_CHECK(r != Z_BUF_ERROR, "{}: '{}' is corrupt after its data: the gzip stream is cut off (no trailer)",
               op_, path_);
    }
  }

 private:
  // Files past 4 GiB reach zlib in pieces.
  void refill() {
    if (z_.avail_in > 0 || fed_ == file_.size()) return;
    z_.avail_in = static_cast<uInt>(std::min<std::size_t>(file_.size() - fed_, std::numeric_limits<uInt>::max()));
    fed_ += z_.avail_in;
  }
  int step() {
    refill();
    const int r = inflate(&z_, Z_NO_FLUSH);
    if (r == Z_STREAM_END) ended_ = true;
    TG_CHECK(r == Z_OK || r == Z_STREAM_END || r == Z_BUF_ERROR, "{}: '{}' is corrupt: {}", op_, path_,
             z_.msg ? z_.msg : "invalid gzip data");
    return r;
  }
  // Concatenated gzip members form one stream (as gzip -d reads them); other trailing bytes are
  // an error. Returns whether another member starts.
  bool next_member() {
    refill();
    if (z_.avail_in == 0) return false;
    TG_CHECK(z_.avail_in >= 2 && z_.next_in[0] == 0x1f && z_.next_in[1] == 0x8b,
             "{}: '{}' has {} bytes of garbage after its gzip data", op_, path_, z_.avail_in);
    TG_CHECK(inflateReset(&z_) == Z_OK, "{}: zlib could not restart for '{}'", op_, path_);
    ended_ = false;
    return true;
  }

  const char* op_;
  std::string path_, file_;
  bool gzip_ = false, ended_ = false;
  z_stream z_{};
  std::size_t pos_ = 0, fed_ = 0;
};

// At most 200 characters of a line for an error message, with control bytes and non-ASCII shown
// as '?': a binary file named by mistake must not spill raw bytes onto the terminal.
std::string printable_excerpt(std::string_view line) {
  std::string out(line.substr(0, 200));
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return out;
}

// Fashion-MNIST has 60 000 training and 10 000 test images; other sets in its format (MNIST) alike.
constexpr std::int64_t kMaxFashionMnistImages = 100'000;

}  // namespace

Tensor read_idx(const std::string& path, const std::function<void(const Shape&)>& check_dims) {
  std::ifstream in = open_regular_file(path, "read_idx");
  // Only an IDX file (00 00 type dims) or a gzip stream (1f 8b) is read whole into memory, and only
  // up to the largest data an IDX file may declare (checked below): not any file named by mistake.
  unsigned char head[4] = {};
  in.read(reinterpret_cast<char*>(head), 4);
  TG_CHECK(in.gcount() > 0, "read_idx: '{}' is empty", path);
  const bool gzip = in.gcount() >= 2 && head[0] == 0x1f && head[1] == 0x8b;
  TG_CHECK(gzip || (in.gcount() == 4 && head[0] == 0 && head[1] == 0),
           "read_idx: '{}' is neither an IDX file nor gzip-compressed (bad magic number)", path);
  in.clear();
  in.seekg(0, std::ios::end);
  const auto file_bytes = static_cast<std::uint64_t>(std::max<std::streamoff>(0, in.tellg()));
  TG_CHECK(file_bytes <= (std::uint64_t{1} << 33) + 64, "read_idx: '{}' is implausibly large ({} bytes)", path, file_bytes);
  in.seekg(0);
  ByteSource src("read_idx", path, std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  unsigned char magic[4];
  src.read(magic, 4, "magic number");
  TG_CHECK(magic[0] == 0 && magic[1] == 0, "read_idx: '{}' is not an IDX file (bad magic number)", path);
  TG_CHECK(magic[2] == 0x08, "read_idx: '{}' holds IDX type 0x{:02x}; only unsigned bytes (0x08) are supported", path,
           magic[2]);
  const int ndim = magic[3];
  TG_CHECK(ndim >= 1 && ndim <= 4, "read_idx: '{}' claims {} dims", path, ndim);
  Shape shape;
  std::uint64_t total = 1;
  for (int d = 0; d < ndim; ++d) {
    unsigned char b[4];
    src.read(b, 4, "dims");
    const std::uint64_t n = (std::uint64_t{b[0]} << 24) | (std::uint64_t{b[1]} << 16) | (std::uint64_t{b[2]} << 8) | b[3];
    TG_CHECK(n > 0 && n <= 100'000'000, "read_idx: '{}' has an implausible dim {} ({})", path, d, n);
    total *= n;
    shape.push_back(static_cast<std::int64_t>(n));
    TG_CHECK(total <= (std::uint64_t{1} << 33), "read_idx: '{}' declares dims {}..., more than 2^33 bytes of data", path,
             shape);
  }
  if (check_dims) check_dims(shape);  // before the data is inflated: a bad header fails at once
  // The data grows as it is read (16 MiB at a time), never ahead of what the file holds.
  std::vector<unsigned char> bytes;
  constexpr std::size_t kChunk = std::size_t{1} << 24;
  for (std::size_t done = 0; done < total;) {
    const std::size_t n = std::min<std::size_t>(kChunk, static_cast<std::size_t>(total) - done);
    bytes.resize(done + n);
    src.read(bytes.data() + done, n, "data");
    done += n;
  }
  src.finish(total);
  Tensor t = empty(shape, DType::i32);
  std::int32_t* p = t.data<std::int32_t>();
  for (std::size_t i = 0; i < bytes.size(); ++i) p[i] = bytes[i];
  return t;
}

std::optional<std::string> find_fashion_mnist() {
  namespace fs = std::filesystem;
  auto holds_files = [](const std::string& dir) {
    return fs::exists(fs::path(dir) / "train-images-idx3-ubyte.gz") && fs::exists(fs::path(dir) / "t10k-labels-idx1-ubyte.gz");
  };
  // A folder the user named must hold the data: falling back to another copy would hide the mistake.
  if (const char* env = std::getenv("TAPEGRAD_FASHION_MNIST"); env && *env) {
    TG_CHECK(holds_files(env),
             "TAPEGRAD_FASHION_MNIST is '{}', which does not hold the Fashion-MNIST files (train-images-idx3-ubyte.gz, ...)",
             env);
    return std::string(env);
  }
  const std::string installed = "/usr/share/datasets/fashion-mnist";
  if (holds_files(installed)) return installed;
  return std::nullopt;
}

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

ImageDataset load_fashion_mnist(const std::string& folder, bool train) {
  TG_CHECK(!folder.empty(), "load_fashion_mnist: empty folder name (\".\" for the current folder)");
  const std::string prefix = (std::filesystem::path(folder) / (train ? "train" : "t10k")).string();
  // The dims are checked from the headers, before any data is inflated: a small gzip file may
  // otherwise declare (and inflate to) gigabytes.
  const Tensor images = read_idx(prefix + "-images-idx3-ubyte.gz", [&](const Shape& dims) {
    TG_CHECK(dims.size() == 3 && dims[0] <= kMaxFashionMnistImages && dims[1] == 28 && dims[2] == 28,
             "load_fashion_mnist: '{}-images-idx3-ubyte.gz' declares images {}, not N 28x28 images with N <= {}", prefix,
             dims, kMaxFashionMnistImages);
  });
  const Tensor labels = read_idx(prefix + "-labels-idx1-ubyte.gz", [&](const Shape& dims) {
    TG_CHECK(dims.size() == 1 && dims[0] == images.shape()[0],
             "load_fashion_mnist: '{}-labels-idx1-ubyte.gz' declares labels {} for {} images", prefix, dims,
             images.shape()[0]);
  });
  TG_CHECK(images.dim() == 3 && images.shape()[1] == 28 && images.shape()[2] == 28 && labels.dim() == 1 &&
               images.shape()[0] == labels.shape()[0],
           "load_fashion_mnist: images {} and labels {} in '{}' are not N 28x28 images with N labels", images.shape(),
           labels.shape(), folder);
  const auto lv = labels.to_vector<std::int32_t>();
  for (std::size_t i = 0; i < lv.size(); ++i)
    TG_CHECK(lv[i] >= 0 && lv[i] < 10, "load_fashion_mnist: label {} (item {} of '{}-labels-idx1-ubyte.gz') is outside 0..9",
             lv[i], i, prefix);
  ImageDataset d;
  d.images = (images.to(DType::f32) / 255.0).unsqueeze(1);  // [N, 1, 28, 28]
  d.labels = labels.to(DType::i64);
  d.class_names = fashion_mnist_classes();
  // The folder spelled one way ("a/b/", "a/c/../b" and "a/b" are one folder), so that a resumed run
  // can compare it with its config.json.
  std::filesystem::path normal = std::filesystem::path(folder).lexically_normal();
  if (!normal.has_filename() && normal.has_parent_path() && normal != normal.root_path()) normal = normal.parent_path();
  d.source = "fashion-mnist:" + normal.string();
  d.levels = 256;
  return d;
}

// ---- digits ---------------------------------------------------------------------------------------------------
namespace {
// Where scripts/get-data.sh puts the digits: $XDG_DATA_HOME/tapegrad, else ~/.local/share/tapegrad.
std::string digits_data_home() {
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg != nullptr && *xdg != '\0')
    return (std::filesystem::path(xdg) / "tapegrad" / "digits.csv.gz").string();
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return (std::filesystem::path(home) / ".local" / "share" / "tapegrad" / "digits.csv.gz").string();
  return {};
}
}  // namespace

std::optional<std::string> find_digits() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("TAPEGRAD_DIGITS"); env != nullptr && *env != '\0') {
    // An explicit choice is not silently replaced by another copy.
    TG_CHECK(std::filesystem::is_regular_file(env), "find_digits: TAPEGRAD_DIGITS is '{}', which is not a file", env);
    return std::string(env);
  }
  if (std::string home = digits_data_home(); !home.empty()) candidates.push_back(std::move(home));
  candidates.emplace_back("/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz");
  for (const std::string& path : candidates)
    if (std::filesystem::is_regular_file(path)) return path;
  return std::nullopt;
}

ImageDataset load_digits(const std::string& path) {
  // The real file is 57 KB (0.3 MB inflated): larger files, and gzip bombs, are refused early.
  constexpr std::size_t kLimit = std::size_t{1} << 24;
  std::ifstream in = open_regular_file(path, "load_digits");
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path, ec);
  TG_CHECK(!ec, "load_digits: cannot read the size of '{}': {}", path, ec.message());
  TG_CHECK(bytes <= kLimit, "load_digits: '{}' is {} bytes; the digits file is far smaller (at most {} accepted)", path, bytes, kLimit);
  ByteSource src("load_digits", path, std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  const std::string text = src.read_to_end(kLimit);
  // One sample per line: 64 pixel levels (row-major 8 x 8, integers 0..16) and the label 0..9.
  constexpr int kFields = 65;
  std::vector<float> pixels;
  std::vector<std::int64_t> labels;
  std::size_t line_start = 0;
  for (std::int64_t line = 1; line_start < text.size(); ++line) {
    std::size_t line_end = text.find('\n', line_start);
    if (line_end == std::string::npos) line_end = text.size();
    std::string_view row(text.data() + line_start, line_end - line_start);
    if (!row.empty() && row.back() == '\r') row.remove_suffix(1);
    line_start = line_end + 1;
    if (row.empty() && line_start >= text.size()) break;  // the final newline
    int field = 0;
    const char* p = row.data();
    const char* const end = row.data() + row.size();
    while (true) {
      int value = -1;
      const auto [next, err] = std::from_chars(p, end, value);
      TG_CHECK(err == std::errc() && field < kFields, "load_digits: '{}' line {}: expected {} comma-separated integers (64 pixel levels and the label), got '{}'",
               path, line, kFields, printable_excerpt(row));
      const bool is_label = field == kFields - 1;
      TG_CHECK(value >= 0 && value <= (is_label ? 9 : 16), "load_digits: '{}' line {}: {} {} is outside 0..{}", path, line,
               is_label ? "label" : "pixel level", value, is_label ? 9 : 16);
      if (is_label) labels.push_back(value);
      else pixels.push_back(static_cast<float>(value) / 16.0f);
      ++field;
      p = next;
      if (p == end) break;
      TG_CHECK(*p == ',', "load_digits: '{}' line {}: expected {} comma-separated integers (64 pixel levels and the label), got '{}'",
               path, line, kFields, printable_excerpt(row));
      ++p;
    }
    TG_CHECK(field == kFields, "load_digits: '{}' line {}: expected {} comma-separated integers (64 pixel levels and the label), got {}",
             path, line, kFields, field);
  }
  const auto n = static_cast<std::int64_t>(labels.size());
  TG_CHECK(n > 0, "load_digits: '{}' holds no samples", path);
  ImageDataset d;
  d.images = from_vector(pixels, {n, 1, 8, 8});  // [N, 1, 8, 8], level / 16
  d.labels = from_vector(labels, {n});          // [N]
  d.class_names = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  d.source = "digits:" + path;
  d.levels = 17;
  return d;
}

// ---- subsets --------------------------------------------------------------------------------------------------
ImageDataset subset(const ImageDataset& d, const Tensor& indices) {
  TG_CHECK(indices.defined() && indices.dim() == 1 && !indices.is_floating_point() && indices.dtype() != DType::boolean,
           "subset: expected 1-D integer indices, got {}", indices.defined() ? fmt::format("{} {}", indices.dtype(), indices.shape()) : std::string("undefined"));
  if (indices.numel() > 0) {
    const std::int64_t lo = ops::amin(indices).item<std::int64_t>(), hi = ops::amax(indices).item<std::int64_t>();
    TG_CHECK(lo >= 0 && hi < d.size(), "subset: indices {}..{} are outside the {} items of '{}'", lo, hi, d.size(), d.source);
  }
  auto [images, labels] = gather_batch(d, indices);
  ImageDataset out = d;
  out.images = images;
  out.labels = labels;
  return out;
}

std::pair<ImageDataset, ImageDataset> random_split(const ImageDataset& d, std::int64_t first, std::uint64_t seed) {
  TG_CHECK(first >= 0 && first <= d.size(), "random_split: cannot take {} of the {} items of '{}'", first, d.size(), d.source);
  Generator gen(seed);
  const Tensor order = randperm(d.size(), gen);  // [N] i64
  return {subset(d, order.narrow(0, 0, first)), subset(d, order.narrow(0, first, d.size() - first))};
}

// ---- synthetic shapes -----------------------------------------------------------------------------------------
const std::vector<std::string>& synthetic_shape_classes() {
  static const std::vector<std::string> names{"disc",     "ring",  "square", "frame", "triangle",
                                              "plus",     "cross", "hbars",  "vbars", "diamond"};
  return names;
}

ImageDataset synthetic_shapes(std::int64_t n, std::uint64_t seed, std::int64_t size) {
  TG_CHECK(n > 0 && size >= 8, "synthetic_shapes: need n > 0 and size >= 8, got {} and {}", n, size);
  Tensor images = zeros({n, 1, size, size});
  Tensor labels = empty({n}, DType::i64);
  float* img = images.data<float>();
  std::int64_t* lab = labels.data<std::int64_t>();
  const double half = static_cast<double>(size) / 2;
  // Image i is drawn from its own stream, so images can be drawn in parallel and the set is the
  // same for any thread count.
  parallel_for(n, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      Generator gen(seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(i));
      const std::int64_t cls = gen.randint(0, 10);
      lab[i] = cls;
      const double cx = half + (gen.uniform() - 0.5) * size * 0.2, cy = half + (gen.uniform() - 0.5) * size * 0.2;
      const double r = size * (0.22 + 0.14 * gen.uniform());  // shape "radius"
      const double ink = 0.6 + 0.4 * gen.uniform();
      const double w = std::max(1.5, r * 0.25);  // stroke width
      float* px = img + i * size * size;
      for (std::int64_t y = 0; y < size; ++y) {
        for (std::int64_t x = 0; x < size; ++x) {
          const double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
          const double d = std::hypot(dx, dy), ax = std::fabs(dx), ay = std::fabs(dy);
          bool on = false;
          switch (cls) {
            case 0: on = d <= r; break;                                      // disc
            case 1: on = std::fabs(d - r * 0.8) <= w * 0.6; break;           // ring
            case 2: on = ax <= r * 0.8 && ay <= r * 0.8; break;              // square
            case 3: on = std::max(ax, ay) <= r * 0.85 && std::max(ax, ay) >= r * 0.85 - w; break;  // frame
            case 4: on = dy <= r * 0.7 && dy >= -r * 0.9 + 1.8 * ax; break;  // triangle (apex up)
            case 5: on = (ax <= w * 0.6 && ay <= r) || (ay <= w * 0.6 && ax <= r); break;          // plus
            case 6: on = std::fabs(ax - ay) <= w * 0.8 && d <= r * 1.1; break;                     // cross (x)
            case 7: on = ax <= r && std::fmod(ay + r, r * 0.66) < w; break;  // horizontal bars
            case 8: on = ay <= r && std::fmod(ax + r, r * 0.66) < w; break;  // vertical bars
            case 9: on = ax + ay <= r; break;                                // diamond
          }
          // Ink plus sensor noise, clamped to [0, 1].
          const double v = (on ? ink : 0.0) + 0.05 * gen.normal();
          px[y * size + x] = static_cast<float>(std::clamp(v, 0.0, 1.0));
        }
      }
    }
  });
  return {images, labels, synthetic_shape_classes(), "synthetic-shapes"};
}

// ---- 2-D toys -------------------------------------------------------------------------------------------------
namespace {
Points make_points(std::int64_t n, std::uint64_t seed, const std::function<void(Generator&, std::int64_t, float*, std::int64_t&)>& draw) {
  TG_CHECK(n > 0, "toy data: n must be positive, got {}", n);
  Generator gen(seed);
  Points p{empty({n, 2}), empty({n}, DType::i64)};
  float* x = p.x.data<float>();
  std::int64_t* y = p.y.data<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) draw(gen, i, x + 2 * i, y[i]);
  return p;
}
}  // namespace

Points two_moons(std::int64_t n, double noise, std::uint64_t seed) {
  return make_points(n, seed, [&](Generator& g, std::int64_t i, float* x, std::int64_t& y) {
    y = i % 2;
    const double t = std::numbers::pi * g.uniform();
    x[0] = static_cast<float>((y ? 1 - std::cos(t) : std::cos(t)) + noise * g.normal());
    x[1] = static_cast<float>((y ? 0.5 - std::sin(t) : std::sin(t)) + noise * g.normal());
  });
}

Points two_spirals(std::int64_t n, double noise, std::uint64_t seed) {
  return make_points(n, seed, [&](Generator& g, std::int64_t i, float* x, std::int64_t& y) {
    y = i % 2;
    const double t = 0.25 + 2.75 * std::numbers::pi * g.uniform();
    const double r = t / (3 * std::numbers::pi), a = t + std::numbers::pi * static_cast<double>(y);
    x[0] = static_cast<float>(r * std::cos(a) + noise * g.normal());
    x[1] = static_cast<float>(r * std::sin(a) + noise * g.normal());
  });
}

Points gaussian_mixture(std::int64_t n, std::int64_t modes, double radius, double std, std::uint64_t seed) {
  TG_CHECK(modes > 0, "gaussian_mixture: modes must be positive");
  return make_points(n, seed, [&](Generator& g, std::int64_t, float* x, std::int64_t& y) {
    y = g.randint(0, modes);
    const double a = 2 * std::numbers::pi * static_cast<double>(y) / static_cast<double>(modes);
    x[0] = static_cast<float>(radius * std::cos(a) + std * g.normal());
    x[1] = static_cast<float>(radius * std::sin(a) + std * g.normal());
  });
}

Points checkerboard(std::int64_t n, std::uint64_t seed) {
  return make_points(n, seed, [&](Generator& g, std::int64_t, float* x, std::int64_t& y) {
    // Uniform on the 8 dark cells of a 4x4 board over [-2, 2]^2; the label is the cell (0..7).
    const std::int64_t cell = g.randint(0, 8), row = cell / 2, col = 2 * (cell % 2) + (row % 2);
    x[0] = static_cast<float>(-2 + col + g.uniform());
    x[1] = static_cast<float>(-2 + row + g.uniform());
    y = cell;
  });
}

// ---- batching -------------------------------------------------------------------------------------------------
BatchSampler::BatchSampler(std::int64_t n, std::int64_t batch, bool shuffle, std::uint64_t seed, bool drop_last)
    : n_(n), batch_(batch), shuffle_(shuffle), drop_last_(drop_last), seed_(seed) {
  TG_CHECK(n > 0 && batch > 0, "BatchSampler: dataset size and batch size must be positive, got {} and {}", n, batch);
  TG_CHECK(!drop_last || batch <= n, "BatchSampler: with drop_last, a batch of {} from {} samples leaves no batch per epoch",
           batch, n);
}

std::int64_t BatchSampler::batches_per_epoch() const { return n_ / batch_ + (!drop_last_ && n_ % batch_ != 0 ? 1 : 0); }

Tensor BatchSampler::batch(std::int64_t epoch, std::int64_t b) const {
  TG_CHECK(b >= 0 && b < batches_per_epoch(), "BatchSampler: batch {} out of range ({} per epoch)", b, batches_per_epoch());
  if (cached_epoch_ != epoch) {
    if (shuffle_) {
      // The epoch's own stream: same order for (seed, epoch) whatever happened before.
      Generator gen(seed_ * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(epoch) + 1);
      order_ = randperm(n_, gen);
    } else {
      order_ = arange(n_);
    }
    cached_epoch_ = epoch;
  }
  const std::int64_t start = b * batch_;
  return order_.narrow(0, start, std::min(batch_, n_ - start)).clone();
}

std::pair<Tensor, Tensor> gather_batch(const ImageDataset& d, const Tensor& indices) {
  NoGradGuard no_grad;
  return {ops::index_select(d.images, 0, indices), ops::index_select(d.labels, 0, indices)};
}

Tensor normalize(const Tensor& images, double mean, double std) {
  TG_CHECK(std > 0, "normalize: std must be positive, got {}", std);
  return (images - mean) / std;
}

Tensor downsample(const Tensor& images, std::int64_t factor) {
  TG_CHECK(images.dim() == 4, "downsample: expected images [N, C, H, W], got {}", images.shape());
  const std::int64_t N = images.shape()[0], C = images.shape()[1], H = images.shape()[2], W = images.shape()[3];
  TG_CHECK(factor > 0 && H % factor == 0 && W % factor == 0, "downsample: factor {} does not divide {}x{}", factor, H, W);
  return ops::mean(images.reshape({N, C, H / factor, factor, W / factor, factor}), {3, 5});
}

Tensor pad_to(const Tensor& images, std::int64_t size) {
  TG_CHECK(images.dim() == 4, "pad_to: expected images [N, C, H, W], got {}", images.shape());
  const std::int64_t H = images.shape()[2], W = images.shape()[3];
  TG_CHECK(size >= H && size >= W && size <= (std::int64_t{1} << 16), "pad_to: cannot pad {}x{} to {} (at most 65536)", H, W, size);
  const std::int64_t top = (size - H) / 2, left = (size - W) / 2;
  return ops::pad(images, {left, size - W - left, top, size - H - top});
}

Tensor random_hflip(const Tensor& images, double p, Generator& gen) {
  TG_CHECK(images.dim() == 4, "random_hflip: expected images [N, C, H, W], got {}", images.shape());
  const Tensor flip = bernoulli({images.shape()[0], 1, 1, 1}, p, DType::boolean, gen);
  return ops::where(flip.expand(images.shape()), images.flip({3}), images);
}

}  // namespace tg::nn::data
