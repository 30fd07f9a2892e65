// Output helpers for training runs: PNG images and labelled image grids, metrics CSV files,
// SVG line plots, a terminal progress bar with rate, ETA and the running loss, and a lock that
// keeps two programs from writing one run folder.
#pragma once

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace tg::nn::output {

// Writes image [H, W] or [C, H, W] (C = 1 or 3; f32 in [0, 1], clamped) as a PNG.
void save_png(const std::string& path, const Tensor& image);

// Tiles images [N, C, H, W] (f32 in [0, 1]) into a grid of `columns` columns with a border, each
// tile optionally captioned (captions in a small built-in font, e.g. predicted labels), scaled up
// by an integer factor for legibility, and writes a PNG.
struct GridOptions {
  std::int64_t columns = 8;
  std::int64_t scale = 2;          // pixels per image pixel
  std::int64_t padding = 2;        // border between tiles (pixels after scaling)
  std::vector<std::string> captions;  // empty, or one per image
  std::vector<bool> caption_red;      // empty, or one per image: draw that caption in red
};
void save_image_grid(const std::string& path, const Tensor& images, const GridOptions& options = {});
// The checks of save_image_grid on the sizes alone (N images of H x W, with captions or not), so
// that a program can refuse a grid it could not write before it computes the images.
void check_image_grid(std::int64_t N, std::int64_t H, std::int64_t W, const GridOptions& options, bool captioned);

// Whether a file could be written at `path` now: its folder exists and is writable, and `path` is
// not a folder or another non-regular file. For commands that write their result after long work
// (sampling, prediction): they check first, so that a typo in the path does not throw the work away.
// `op` names the command in the error.
void check_writable(const std::string& path, const char* op);

// Keeps a CSV file's header and the rows whose integer in column `column` (0-based, not the last
// column) is at most `max_value`; other rows, and a row cut off mid-write, are dropped. The file is rewritten
// atomically; a missing file is left alone. For resumed runs: the rows logged after the checkpoint.
void keep_csv_rows_through(const std::string& path, std::size_t column, std::int64_t max_value);

// Writes rows to a CSV file, one flushed line per row (safe when the process is killed);
// sync() also makes them durable across a power loss, e.g. before the checkpoint they belong
// to is committed. `replace` starts the file over with the header; `append` (resumed runs) keeps
// the rows already there: the file must then have the same header, and is created with it when
// missing.
class CsvWriter {
 public:
  enum class Mode { replace, append };
  CsvWriter(const std::string& path, std::vector<std::string> header, Mode mode = Mode::replace);
  ~CsvWriter();
  CsvWriter(const CsvWriter&) = delete;
  CsvWriter& operator=(const CsvWriter&) = delete;
  void row(const std::vector<double>& values);
  void row(const std::vector<std::string>& values);
  void sync();  // fsync: the rows written so far reach the disk

 private:
  std::FILE* f_;
  std::string path_;
  std::size_t columns_;
};

// A CSV file of numbers as CsvWriter writes it: the header's names and one row of values each
// (nan and inf allowed). Every row must have the header's column count and parse completely;
// errors name the file and the line.
struct CsvTable {
  std::vector<std::string> header;
  std::vector<std::vector<double>> rows;
  // The values of the column called `name` (an error names the columns there are).
  std::vector<double> column(const std::string& name) const;
};
CsvTable read_csv(const std::string& path);

// A line chart as a self-contained SVG file.
struct Series {
  std::string name;
  std::vector<double> x, y;
};
struct PlotOptions {
  std::string title, x_label, y_label;
  bool log_y = false;
  int width = 720, height = 420;
};
void plot_svg(const std::string& path, const std::vector<Series>& series, const PlotOptions& options = {});

// "[#######.....] 45%  1234/2745  87.3 it/s  ETA 0:17  loss 0.4321" on stderr, redrawn in place on a
// terminal and printed about every 10% otherwise (logs stay readable).
class ProgressBar {
 public:
  ProgressBar(std::int64_t total, std::string label);
  void update(std::int64_t done, double loss) { update(done, std::optional<double>(loss)); }
  void update(std::int64_t done);  // progress without a loss (sampling, evaluation)
  void finish(const std::string& message = "");
  // Ends the bar where it stands (an interrupted run): the last line shows the last update, not 100%.
  void stop();

 private:
  void update(std::int64_t done, std::optional<double> loss);
  void draw(std::int64_t done, double loss, bool final);
  std::int64_t total_;
  std::string label_;
  bool tty_;
  std::int64_t last_printed_ = -1;  // decile last printed (non-terminal output)
  std::int64_t last_drawn_ = -1;    // `done` at the last draw
  std::int64_t last_done_ = 0;      // `done` at the last update
  std::chrono::steady_clock::time_point start_, last_draw_;
  double smoothed_loss_ = 0;      // of the finite losses
  bool has_loss_ = false;
  std::int64_t non_finite_ = 0;    // NaN / Inf losses seen: shown, never smoothed away
  double last_non_finite_ = 0;
};

// Holds `<folder>/.lock` (an advisory flock) while alive: a second program that tries to write
// the same run folder gets a clear error instead of interleaving its files with the first one's.
// The lock goes with the process, also when it is killed. The folder must exist.
class RunFolderLock {
 public:
  explicit RunFolderLock(const std::string& folder);
  ~RunFolderLock();
  RunFolderLock(const RunFolderLock&) = delete;
  RunFolderLock& operator=(const RunFolderLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace tg::nn::output
