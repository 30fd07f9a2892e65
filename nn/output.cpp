#include "nn/output.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <cmath>
#include <fmt/format.h>
#include <fstream>
#include <limits>

#include "core/autograd.hpp"
#include "nn/checkpoint.hpp"

extern "C" {
#include <stb/stb_easy_font.h>
int stbi_write_png_to_func(void (*func)(void* context, void* data, int size), void* context, int w, int h, int comp,
                           const void* data, int stride_in_bytes);
}

namespace tg::nn::output {
namespace {

std::uint8_t to_byte(float v) {
  if (!(v > 0)) return 0;  // also NaN
  if (v >= 1) return 255;
  return static_cast<std::uint8_t>(std::lround(v * 255.0f));
}

// Encoded in memory, then written atomically with checked I/O (stb's own file writer ignores write
// errors: a full disk would leave an empty PNG behind a successful call).
void write_png(const std::string& path, const std::vector<std::uint8_t>& rgb, std::int64_t w, std::int64_t h) {
  std::string png;
  const auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
  };
  TG_CHECK(stbi_write_png_to_func(append, &png, static_cast<int>(w), static_cast<int>(h), 3, rgb.data(),
                                  static_cast<int>(w * 3)) != 0,
           "save_png: cannot encode '{}' ({} x {})", path, w, h);
  write_file_atomically(path, png);
}

// Draws text with stb_easy_font (axis-aligned quads) into an RGB buffer.
void draw_text(std::vector<std::uint8_t>& rgb, std::int64_t w, std::int64_t h, std::int64_t x0, std::int64_t y0,
               const std::string& text, std::uint8_t r, std::uint8_t g, std::uint8_t b) {
  std::vector<float> buffer(16 * 1024);  // per call: grids may be drawn on several threads at once
  // The font has glyphs for printable ASCII only, and indexes its table with (char - 32): anything
  // else (tabs, UTF-8 bytes) would read outside it. Such characters are drawn as '?'.
  std::string ascii = text;
  for (char& ch : ascii)
    if (ch != '\n' && (ch < 32 || ch > 126)) ch = '?';
  const int quads = stb_easy_font_print(0, 0, ascii.data(), nullptr, buffer.data(),
                                        static_cast<int>(buffer.size() * sizeof(float)));
  const float* v = buffer.data();
  for (int q = 0; q < quads; ++q) {
    const float* quad = v + q * 16;  // 4 vertices of (x, y, z, color)
    const auto xa = static_cast<std::int64_t>(quad[0]), ya = static_cast<std::int64_t>(quad[1]);
    const auto xb = static_cast<std::int64_t>(quad[8]), yb = static_cast<std::int64_t>(quad[9]);
    for (std::int64_t y = std::min(ya, yb); y < std::max(ya, yb); ++y)
      for (std::int64_t x = std::min(xa, xb); x < std::max(xa, xb); ++x) {
        const std::int64_t px = x0 + x, py = y0 + y;
        if (px < 0 || py < 0 || px >= w || py >= h) continue;
        std::uint8_t* p = &rgb[static_cast<std::size_t>((py * w + px) * 3)];
        p[0] = r;
        p[1] = g;
        p[2] = b;
      }
  }
}

}  // namespace

void check_writable(const std::string& path, const char* op) {
  namespace fs = std::filesystem;
  TG_CHECK(!path.empty(), "{}: empty output path", op);
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  TG_CHECK(fs::is_directory(dir, ec), "{}: cannot write '{}': folder '{}' {}", op, path, dir.string(),
           fs::exists(dir, ec) ? "is not a folder (a file of that name is in the way)" : "does not exist");
  const fs::file_status st = fs::status(target, ec);
  TG_CHECK(!fs::exists(st) || fs::is_regular_file(st), "{}: cannot write '{}': it exists and is not a regular file", op,
           path);
  // Files are written through a temporary file in the same folder, renamed over the target.
  TG_CHECK(::access(dir.c_str(), W_OK | X_OK) == 0, "{}: cannot write '{}': folder '{}' is not writable ({})", op, path,
           dir.string(), std::strerror(errno));
}

void save_png(const std::string& path, const Tensor& image) {
  TG_CHECK(image.dim() == 2 || image.dim() == 3, "save_png: expected [H, W] or [C, H, W], got {}", image.shape());
  const Tensor img = (image.dim() == 2 ? image.unsqueeze(0) : image).detach().to(DType::f32).contiguous();
  const std::int64_t C = img.shape()[0], H = img.shape()[1], W = img.shape()[2];
  TG_CHECK(C == 1 || C == 3, "save_png: expected 1 or 3 channels, got {}", C);
  const float* p = img.data<float>();
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(H * W * 3));
  for (std::int64_t y = 0; y < H; ++y)
    for (std::int64_t x = 0; x < W; ++x)
      for (std::int64_t c = 0; c < 3; ++c) rgb[(y * W + x) * 3 + c] = to_byte(p[(C == 1 ? 0 : c) * H * W + y * W + x]);
  write_png(path, rgb, W, H);
}

void check_image_grid(std::int64_t N, std::int64_t H, std::int64_t W, const GridOptions& o, bool captioned) {
  TG_CHECK(N > 0 && H > 0 && W > 0 && o.columns > 0 && o.scale > 0 && o.padding >= 0,
           "save_image_grid: bad grid options or no images ({} images of {} x {}, {} columns, scale {}, padding {})", N, H, W,
           o.columns, o.scale, o.padding);
  const std::int64_t cols = std::min(o.columns, N), rows = (N + cols - 1) / cols;
  const std::int64_t caption_h = captioned ? 12 : 0;
  // The picture's size in f64 first: absurd scales or paddings must not wrap around.
  const double width = static_cast<double>(cols) * static_cast<double>(W * o.scale) + static_cast<double>(cols + 1) * o.padding;
  const double height = static_cast<double>(rows) * static_cast<double>(H * o.scale + caption_h) + static_cast<double>(rows + 1) * o.padding;
  TG_CHECK(static_cast<double>(o.scale) * std::max(H, W) <= 0x1p20 && width * height <= 0x1p28,
           "save_image_grid: a {:.0f} x {:.0f} pixel grid is too large (at most 2^28 pixels; {} images)", width, height, N);
}

void save_image_grid(const std::string& path, const Tensor& images, const GridOptions& o) {
  TG_CHECK(images.dim() == 4, "save_image_grid: expected images [N, C, H, W], got {}", images.shape());
  const Tensor img = images.detach().to(DType::f32).contiguous();
  const std::int64_t N = img.shape()[0], C = img.shape()[1], H = img.shape()[2], W = img.shape()[3];
  TG_CHECK(C == 1 || C == 3, "save_image_grid: expected 1 or 3 channels, got {}", C);
  TG_CHECK(N > 0 && o.columns > 0 && o.scale > 0 && o.padding >= 0, "save_image_grid: bad grid options or no images");
  TG_CHECK(o.captions.empty() || static_cast<std::int64_t>(o.captions.size()) == N,
           "save_image_grid: {} captions for {} images", o.captions.size(), N);
  TG_CHECK(o.caption_red.empty() || static_cast<std::int64_t>(o.caption_red.size()) == N,
           "save_image_grid: {} caption colours (caption_red) for {} images", o.caption_red.size(), N);
  check_image_grid(N, H, W, o, !o.captions.empty());
  const std::int64_t cols = std::min(o.columns, N), rows = (N + cols - 1) / cols;
  const std::int64_t caption_h = o.captions.empty() ? 0 : 12;
  const std::int64_t tile_w = W * o.scale, tile_h = H * o.scale + caption_h;
  const std::int64_t gw = cols * tile_w + (cols + 1) * o.padding, gh = rows * tile_h + (rows + 1) * o.padding;
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(gw * gh * 3), 40);  // dark grey background
  const float* p = img.data<float>();
  for (std::int64_t n = 0; n < N; ++n) {
    const std::int64_t ox = o.padding + (n % cols) * (tile_w + o.padding);
    const std::int64_t oy = o.padding + (n / cols) * (tile_h + o.padding);
    for (std::int64_t y = 0; y < H * o.scale; ++y)
      for (std::int64_t x = 0; x < W * o.scale; ++x)
        for (std::int64_t c = 0; c < 3; ++c)
          rgb[((oy + y) * gw + ox + x) * 3 + c] =
              to_byte(p[((n * C + (C == 1 ? 0 : c)) * H + y / o.scale) * W + x / o.scale]);
    if (!o.captions.empty()) {
      const bool red = !o.caption_red.empty() && o.caption_red[static_cast<std::size_t>(n)];
      draw_text(rgb, gw, gh, ox + 1, oy + H * o.scale + 2, o.captions[static_cast<std::size_t>(n)], red ? 255 : 230,
                red ? 80 : 230, red ? 80 : 230);
    }
  }
  write_png(path, rgb, gw, gh);
}

CsvWriter::CsvWriter(const std::string& path, std::vector<std::string> header, Mode mode)
    : path_(path), columns_(header.size()) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  TG_CHECK(!std::filesystem::exists(status) || std::filesystem::is_regular_file(status),
           "CsvWriter: '{}' exists and is not a regular file", path);
  for (const std::string& name : header)
    TG_CHECK(!name.empty() && name.find_first_of(",\"\r\n") == std::string::npos,
             "CsvWriter: '{}': the column name '{}' is empty or contains a comma, quote or line break", path, name);
  std::string expected;
  for (std::size_t i = 0; i < header.size(); ++i) expected += (i ? "," : "") + header[i];
  std::string all;  // the file so far, when appending
  if (mode == Mode::append && std::filesystem::is_regular_file(path, ec)) {
    std::ifstream in(path, std::ios::binary);
    all.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (!all.empty()) {
    const std::string first = all.substr(0, all.find('\n'));
    TG_CHECK(first == expected, "CsvWriter: '{}' has the columns '{}'{}, not '{}': cannot append to it", path, first,
             first.ends_with('\r') ? " (Windows line endings)" : "", expected);
  }
  if (all.find('\n') != std::string::npos) {  // the header line at least
    // A last row cut off by an interrupted run is dropped.
    if (all.back() != '\n') {
      std::filesystem::resize_file(path, all.rfind('\n') + 1, ec);
      TG_CHECK(!ec, "CsvWriter: cannot drop the cut-off last row of '{}': {}", path, ec.message());
    }
    f_ = std::fopen(path.c_str(), "a");
    TG_CHECK(f_ != nullptr, "CsvWriter: cannot open '{}' for appending", path);
    return;
  }
  f_ = std::fopen(path.c_str(), "w");
  TG_CHECK(f_ != nullptr, "CsvWriter: cannot create '{}'", path);
  row(header);
}

CsvWriter::~CsvWriter() {
  if (f_) std::fclose(f_);
}

void CsvWriter::row(const std::vector<std::string>& values) {
  TG_CHECK(values.size() == columns_, "CsvWriter: {} values for {} columns", values.size(), columns_);
  // Cells are written as they are (no quoting): one holding a separator would shift the columns.
  for (std::size_t i = 0; i < values.size(); ++i)
    TG_CHECK(values[i].find_first_of(",\"\r\n") == std::string::npos,
             "CsvWriter: '{}': the value '{}' of column {} contains a comma, quote or line break", path_, values[i], i);
  for (std::size_t i = 0; i < values.size(); ++i) fmt::print(f_, "{}{}", i ? "," : "", values[i]);
  fmt::print(f_, "\n");
  TG_CHECK(std::fflush(f_) == 0 && !std::ferror(f_), "CsvWriter: writing '{}' failed: {}", path_, std::strerror(errno));
}

void CsvWriter::sync() {
  TG_CHECK(std::fflush(f_) == 0 && ::fsync(::fileno(f_)) == 0, "CsvWriter: syncing '{}' failed: {}", path_, std::strerror(errno));
}

void CsvWriter::row(const std::vector<double>& values) {
  std::vector<std::string> s;
  for (double v : values) {
    // Whole numbers (steps, epochs, counts) in full; other values to 6 significant digits.
    const bool whole = std::isfinite(v) && v == std::trunc(v) && std::fabs(v) < 1e15;
    s.push_back(whole ? fmt::format("{}", static_cast<long long>(v)) : fmt::format("{:.6g}", v));
  }
  row(s);
}

std::vector<double> CsvTable::column(const std::string& name) const {
  const auto it = std::find(header.begin(), header.end(), name);
  TG_CHECK(it != header.end(), "CsvTable: no column '{}' (the columns are {})", name, fmt::join(header, ", "));
  const auto c = static_cast<std::size_t>(it - header.begin());
  std::vector<double> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back(r[c]);
  return out;
}

CsvTable read_csv(const std::string& path) {
  std::ifstream in = nn::open_regular_file(path, "read_csv");
  CsvTable t;
  std::string line;
  TG_CHECK(static_cast<bool>(std::getline(in, line)), "read_csv: '{}' is empty (no header)", path);
  const auto strip_cr = [](std::string& l) {  // Windows line endings
    if (!l.empty() && l.back() == '\r') l.pop_back();
  };
  strip_cr(line);
  for (std::size_t at = 0;;) {
    const std::size_t comma = line.find(',', at);
    t.header.push_back(line.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  for (std::int64_t number = 2; std::getline(in, line); ++number) {
    strip_cr(line);
    std::vector<double> row;
    const char* p = line.data();
    const char* const end = line.data() + line.size();
    while (true) {
      double v = 0;
      const auto [next, err] = std::from_chars(p, end, v);
      TG_CHECK(err == std::errc() && (next == end || *next == ','), "read_csv: '{}' line {}: '{}' is not a row of numbers", path,
               number, line.substr(0, 200));
      row.push_back(v);
      if (next == end) break;
      p = next + 1;
    }
    TG_CHECK(row.size() == t.header.size(), "read_csv: '{}' line {} has {} values for the {} columns", path, number, row.size(),
             t.header.size());
    t.rows.push_back(std::move(row));
  }
  return t;
}

void plot_svg(const std::string& path, const std::vector<Series>& series, const PlotOptions& o) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  auto ty = [&](double y) { return o.log_y ? std::log10(std::max(y, 1e-300)) : y; };
  for (const Series& s : series) {
    TG_CHECK(s.x.size() == s.y.size(), "plot_svg: series '{}' has {} x and {} y values", s.name, s.x.size(), s.y.size());
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i]) || (o.log_y && s.y[i] <= 0)) continue;
      x0 = std::min(x0, s.x[i]);
      x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, ty(s.y[i]));
      y1 = std::max(y1, ty(s.y[i]));
    }
  }
  if (!(x1 > x0)) x1 = x0 + 1;
  if (!(y1 > y0)) y1 = y0 + 1;
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  const double left = 70, right = 170, top = 40, bottom = 50;
  const double pw = o.width - left - right, ph = o.height - top - bottom;
  auto sx = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto sy = [&](double y) { return top + (1 - (ty(y) - y0) / (y1 - y0)) * ph; };
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
      o.width, o.height, left + pw / 2, o.title);
  for (int t = 0; t <= 5; ++t) {  // grid and tick labels
    const double fy = y0 + (y1 - y0) * t / 5, fx = x0 + (x1 - x0) * t / 5;
    const double py = top + (1 - t / 5.0) * ph, px = left + t / 5.0 * pw;
    svg += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n", left, py, left + pw, py);
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.4g}</text>\n", left - 6, py + 4,
                       o.log_y ? std::pow(10.0, fy) : fy);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.4g}</text>\n", px, top + ph + 18, fx);
  }
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", left, top, pw, ph);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", left + pw / 2, o.height - 10, o.x_label);
  svg += fmt::format("<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
                     top + ph / 2, top + ph / 2, o.y_label);
  for (std::size_t k = 0; k < series.size(); ++k) {
    const Series& s = series[k];
    const char* color = kColors[k % 8];
    std::string points;
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.y[i]) && !(o.log_y && s.y[i] <= 0)) points += fmt::format("{:.1f},{:.1f} ", sx(s.x[i]), sy(s.y[i]));
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" points=\"{}\"/>\n", color, points);
    if (s.x.size() <= 40)
      for (std::size_t i = 0; i < s.x.size(); ++i)
        if (std::isfinite(s.y[i]) && !(o.log_y && s.y[i] <= 0))
          svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"/>\n", sx(s.x[i]), sy(s.y[i]), color);
    const double ly = top + 10 + 18.0 * static_cast<double>(k);
    svg += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>\n", left + pw + 12,
                       ly, left + pw + 32, ly, color);
    svg += fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", left + pw + 38, ly + 4, s.name);
  }
  svg += "</svg>\n";
  std::ofstream out(path);
  TG_CHECK(out.good(), "plot_svg: cannot create '{}'", path);
  out << svg;
}

ProgressBar::ProgressBar(std::int64_t total, std::string label)
    : total_(std::max<std::int64_t>(total, 1)), label_(std::move(label)), tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

void ProgressBar::update(std::int64_t done) { update(done, std::nullopt); }

void ProgressBar::update(std::int64_t done, std::optional<double> maybe_loss) {
  done = std::clamp<std::int64_t>(done, 0, total_);
  last_done_ = done;
  const double loss = maybe_loss.value_or(0.0);
  const bool first_non_finite = maybe_loss && !std::isfinite(loss) && non_finite_ == 0;
  if (!maybe_loss) {
  } else if (std::isfinite(loss)) {
    smoothed_loss_ = has_loss_ ? 0.95 * smoothed_loss_ + 0.05 * loss : loss;
    has_loss_ = true;
  } else {
    ++non_finite_;
    last_non_finite_ = loss;
  }
  const auto now = std::chrono::steady_clock::now();
  if (first_non_finite) {  // shown at once: a diverging run should not look healthy
  } else if (tty_) {
    if (now - last_draw_ < std::chrono::milliseconds(100) && done < total_) return;
  } else {
    const std::int64_t decile = done * 10 / total_;
    if (decile == last_printed_ || done == 0) return;
    last_printed_ = decile;
  }
  last_draw_ = now;
  draw(done, loss, false);
}

void ProgressBar::draw(std::int64_t done, double, bool final) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  last_drawn_ = done;
  const double rate = secs > 0.05 ? static_cast<double>(done) / secs : 0;  // too early for a rate otherwise
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0;
  const int width = 24;
  const int filled = static_cast<int>(width * std::min<std::int64_t>(done, total_) / total_);
  const auto eta_s = static_cast<long>(eta);
  std::string line = fmt::format("{} [{}{}] {:3d}%  {}/{}", label_, std::string(filled, '#'), std::string(width - filled, '.'),
                                 static_cast<int>(100 * done / total_), done, total_);
  if (rate > 0) line += fmt::format("  {:.1f} it/s  ETA {}:{:02d}", rate, eta_s / 60, eta_s % 60);
  if (has_loss_) line += fmt::format("  loss {:.5g}", smoothed_loss_);
  if (non_finite_ > 0) line += fmt::format("  {} non-finite loss{} (last {})", non_finite_, non_finite_ > 1 ? "es" : "", last_non_finite_);
  if (tty_) fmt::print(stderr, "\r{}\x1b[K{}", line, final ? "\n" : "");
  else fmt::print(stderr, "{}\n", line);
  std::fflush(stderr);
}

void ProgressBar::finish(const std::string& message) {
  if (tty_ || last_drawn_ != total_) draw(total_, smoothed_loss_, true);
  if (!message.empty()) fmt::print(stderr, "{}\n", message);
}

void ProgressBar::stop() {
  if (tty_ || last_drawn_ != last_done_) draw(last_done_, smoothed_loss_, true);
}

void keep_csv_rows_through(const std::string& path, std::size_t column, std::int64_t max_value) {
  if (!std::filesystem::is_regular_file(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  if (!std::getline(in, line)) return;
  // The key column must exist and not be the last one (a row's key must be followed by a comma, which
  // is how a row cut off mid-write is told apart): otherwise every row would be dropped.
  const auto columns = static_cast<std::size_t>(std::count(line.begin(), line.end(), ',')) + 1;
  TG_CHECK(column + 1 < columns,
           "keep_csv_rows_through: '{}' has {} column(s) in its header '{}'; the key column {} must be one of the first "
           "{} (0-based, not the last)",
           path, columns, line.substr(0, 200), column, columns - 1);
  kept = line + "\n";
  while (std::getline(in, line)) {
    std::size_t at = 0;  // start of field `column`
    for (std::size_t c = 0; c < column && at != std::string::npos; ++c) {
      at = line.find(',', at);
      if (at != std::string::npos) ++at;
    }
    if (at == std::string::npos) continue;
    std::int64_t v = 0;
    const auto [end, err] = std::from_chars(line.data() + at, line.data() + line.size(), v);
    if (err == std::errc() && end < line.data() + line.size() && *end == ',' && v <= max_value) kept += line + "\n";
  }
  nn::write_file_atomically(path, kept);
}

RunFolderLock::RunFolderLock(const std::string& folder) {
  const std::string path = folder + "/.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  TG_CHECK(fd_ >= 0, "run folder '{}': cannot open its lock file: {}", folder, std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    TG_CHECK(err != EWOULDBLOCK, "run folder '{}' is in use (locked through '{}' by another program, or by another lock in this one); "
             "wait for it or use another folder",
             folder, path);
    TG_FAIL("run folder '{}': cannot lock '{}': {}", folder, path, std::strerror(err));
  }
}

RunFolderLock::~RunFolderLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace tg::nn::output
