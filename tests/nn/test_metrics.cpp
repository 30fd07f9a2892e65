// Metrics against closed forms; output helpers write what they claim.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "nn/interrupt.hpp"
#include "nn/metrics.hpp"
#include "nn/output.hpp"
#include "ops/elementwise.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

TEST_CASE("accuracy and confusion matrix", "[nn][metrics]") {
  const Tensor logits = tensor({2, 1, 0, 0, 3, 1, 1, 0, 5}, {3, 3});
  const Tensor labels = tensor({0, 2, 2}, DType::i64);
  CHECK(nn::metrics::accuracy(logits, labels) == Approx(2.0 / 3));
  CHECK(nn::metrics::accuracy(tensor({0, 1}, DType::i64), tensor({0, 0}, DType::i64)) == 0.5);
  CHECK_THROWS_WITH(nn::metrics::accuracy(zeros({0, 3}), zeros({0}, DType::i64)), Contains("accuracy: no samples"));
  const Tensor cm = nn::metrics::confusion_matrix(tensor({0, 1, 2, 2}, DType::i64), tensor({0, 2, 2, 1}, DType::i64), 3);
  CHECK(cm.to_vector<std::int64_t>() == std::vector<std::int64_t>{1, 0, 0, 0, 0, 1, 0, 1, 1});
  // i32 ids count like i64 ones.
  CHECK(nn::metrics::accuracy(tensor({0, 1}, DType::i32), tensor({0, 0}, DType::i32)) == 0.5);
  CHECK(nn::metrics::confusion_matrix(tensor({1}, DType::i32), tensor({0}, DType::i64), 2).to_vector<std::int64_t>() ==
        std::vector<std::int64_t>{0, 1, 0, 0});
  // Float class ids are refused, not truncated (0.9 would count as class 0).
  CHECK_THROWS_WITH(nn::metrics::confusion_matrix(tensor({0.9, 1.0}), tensor({1, 1}, DType::i64), 2),
                    Contains("confusion_matrix: need integer class ids, got predictions f32 and labels i64"));
  CHECK_THROWS_WITH(nn::metrics::confusion_matrix(tensor({1, 1}, DType::i64), tensor({0.9, 1.0}, DType::f64), 2),
                    Contains("labels f64"));
  CHECK_THROWS_WITH(nn::metrics::accuracy(tensor({0.9, 1.0}), tensor({1, 1}, DType::i64)),
                    Contains("accuracy: need integer labels and either scores [N, C] or integer class ids [N], got f32 [2]"));
  CHECK_THROWS_WITH(nn::metrics::accuracy(logits, tensor({0.0, 2.0, 2.0})), Contains("labels f32 [3]"));
}

TEST_CASE("Fréchet distance matches the closed form for Gaussians", "[nn][metrics]") {
  Generator gen(3);
  const std::int64_t n = 20000;
  const Tensor a = randn({n, 4}, DType::f64, gen);
  const Tensor b = randn({n, 4}, DType::f64, gen) * 2.0 + 1.0;  // mean 1, cov 4 I
  // |mu|^2 = 4; Tr(I) + Tr(4I) - 2 Tr(2I) = 4 + 16 - 16 = 4  => FD = 8
  CHECK(nn::metrics::frechet_distance(a, b) == Approx(8.0).epsilon(0.03));
  CHECK(nn::metrics::frechet_distance(a, a) == Approx(0.0).margin(1e-8));
  const double floor = nn::metrics::frechet_noise_floor(a);
  CHECK(floor > 0.0);
  CHECK(floor < 0.01);
  CHECK_THROWS_WITH(nn::metrics::frechet_distance(a, zeros({5, 3})), Contains("feature sets"));
}

TEST_CASE("bits per dim and sliced Wasserstein", "[nn][metrics]") {
  // A uniform model over 256 levels on [-1, 1]: density 1/2 per dim, nll = D log 2 -> 8 bits/dim.
  CHECK(nn::metrics::bits_per_dim(3 * std::log(2.0), 3, 256) == Approx(8.0));
  Generator gen(4);
  const Tensor x = randn({4000, 2}, DType::f64, gen);
  CHECK(nn::metrics::sliced_wasserstein(x, x, 64, gen) == 0.0);
  const Tensor shifted = x + tensor({3.0, 0.0}, DType::f64);
  // Projections shift by 3 cos(theta): sqrt(E[9 cos^2]) = 3 / sqrt(2) for random directions.
  CHECK(nn::metrics::sliced_wasserstein(x, shifted, 4000, gen) == Approx(3.0 / std::sqrt(2.0)).epsilon(0.03));
  CHECK_THROWS_WITH(nn::metrics::sliced_wasserstein(zeros({0, 2}), zeros({0, 2}), 8, gen), Contains("need at least one point"));
}

TEST_CASE("energy distance: the V-statistic against a direct sum", "[nn][metrics]") {
  // Two points at distance 1: 2 * 1 - 0 - 0.
  CHECK(nn::metrics::energy_distance(tensor({0.0, 0.0}, {1, 2}, DType::f64), tensor({0.0, 1.0}, {1, 2}, DType::f64)) == 2.0);
  Generator gen(5);
  const Tensor a = randn({37, 3}, DType::f64, gen), b = randn({23, 3}, DType::f64, gen) + 0.5;
  auto mean_dist = [](const Tensor& x, const Tensor& y) {
    double s = 0;
    for (std::int64_t i = 0; i < x.shape()[0]; ++i)
      for (std::int64_t j = 0; j < y.shape()[0]; ++j) {
        double q = 0;
        for (std::int64_t k = 0; k < x.shape()[1]; ++k) q += std::pow(x.at<double>({i, k}) - y.at<double>({j, k}), 2);
        s += std::sqrt(q);
      }
    return s / static_cast<double>(x.shape()[0] * y.shape()[0]);
  };
  const double expected = 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b);
  CHECK(nn::metrics::energy_distance(a, b) == Approx(expected).epsilon(1e-12));
  CHECK(nn::metrics::energy_distance(b, a) == Approx(expected).epsilon(1e-12));
  CHECK(nn::metrics::energy_distance(a, a) == 0.0);
  CHECK(nn::metrics::energy_distance(a.t().contiguous().t(), b.to(DType::f32)) == Approx(nn::metrics::energy_distance(a, b.to(DType::f32))));
  CHECK(test::same_bits_across_threads([&] { return Tensors{scalar_tensor(nn::metrics::energy_distance(a, b), DType::f64)}; }));
  // Samples of one distribution are close; a shifted one is far.
  const Tensor p = randn({400, 2}, DType::f64, gen), q = randn({400, 2}, DType::f64, gen);
  CHECK(nn::metrics::energy_distance(p, q) < 0.05);
  CHECK(nn::metrics::energy_distance(p, q + 2.0) > 1.0);
  // Large finite points: squared differences would overflow without the power-of-two scaling.
  CHECK(nn::metrics::energy_distance(tensor({1e160, -1e160}, {2, 1}, DType::f64), tensor({0.0}, {1, 1}, DType::f64)) ==
        Approx(1e160).epsilon(1e-15));
  CHECK_THROWS_WITH(nn::metrics::energy_distance(zeros({3, 2}), zeros({3, 3})), Contains("need point sets [N, D] and [M, D], got [3, 2] and [3, 3]"));
  CHECK_THROWS_WITH(nn::metrics::energy_distance(zeros({0, 2}), zeros({3, 2})), Contains("need at least one point"));
  CHECK_THROWS_WITH(nn::metrics::energy_distance(tensor({NAN, 0.0}, {1, 2}), zeros({3, 2})), Contains("non-finite value nan"));
}

TEST_CASE("PNG grids, CSV, SVG plots, progress bar", "[nn][output]") {
  const fs::path dir = fs::temp_directory_path() / fmt::format("tapegrad-out-{}", ::getpid());
  fs::create_directories(dir);
  const Tensor imgs = uniform({5, 1, 8, 8}, 0, 1);
  nn::output::save_image_grid((dir / "grid.png").string(), imgs, {.columns = 3, .captions = {"a", "b", "c", "d", "e"}});
  nn::output::save_png((dir / "one.png").string(), imgs.select(0, 0));
  {  // Characters the font lacks (UTF-8 bytes, a tab) are drawn as '?' (they used to index outside its table).
    auto bytes = [&](const char* f) {
      std::ifstream in(dir / f, std::ios::binary);
      return std::string(std::istreambuf_iterator<char>(in), {});
    };
    nn::output::save_image_grid((dir / "utf8.png").string(), imgs.narrow(0, 0, 1), {.captions = {"caf\xc3\xa9\tx"}});
    nn::output::save_image_grid((dir / "ascii.png").string(), imgs.narrow(0, 0, 1), {.captions = {"caf???x"}});
    CHECK(bytes("utf8.png") == bytes("ascii.png"));
  }
  for (const char* f : {"grid.png", "one.png"}) {
    std::ifstream in(dir / f, std::ios::binary);
    char sig[8];
    in.read(sig, 8);
    CHECK(std::string(sig + 1, 3) == "PNG");
  }
  {
    nn::output::CsvWriter csv((dir / "m.csv").string(), {"step", "loss"});
    csv.row(std::vector<double>{1, 0.5});
    csv.sync();
    CHECK_THROWS_WITH(csv.row(std::vector<double>{1}), Contains("1 values for 2 columns"));
  }
  std::ifstream in(dir / "m.csv");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  CHECK(text == "step,loss\n1,0.5\n");
  auto read_text = [&](const char* name) {
    std::ifstream f(dir / name);
    return std::string((std::istreambuf_iterator<char>(f)), {});
  };
  {  // append (a resumed run): the rows stay; a row cut off by an interruption is dropped
    std::ofstream(dir / "m.csv", std::ios::app) << "2,0.2";
    nn::output::CsvWriter csv((dir / "m.csv").string(), {"step", "loss"}, nn::output::CsvWriter::Mode::append);
    csv.row(std::vector<double>{2, 0.25});
  }
  CHECK(read_text("m.csv") == "step,loss\n1,0.5\n2,0.25\n");
  CHECK_THROWS_WITH(nn::output::CsvWriter((dir / "m.csv").string(), {"epoch", "loss"}, nn::output::CsvWriter::Mode::append),
                    Contains("has the columns 'step,loss', not 'epoch,loss'"));
  CHECK(read_text("m.csv") == "step,loss\n1,0.5\n2,0.25\n");
  std::ofstream(dir / "other.csv") << "foo,bar";  // not ours, even without a newline: refused, kept
  CHECK_THROWS_WITH(nn::output::CsvWriter((dir / "other.csv").string(), {"step", "loss"}, nn::output::CsvWriter::Mode::append),
                    Contains("has the columns 'foo,bar', not 'step,loss'"));
  CHECK(read_text("other.csv") == "foo,bar");
  { nn::output::CsvWriter fresh((dir / "new.csv").string(), {"a"}, nn::output::CsvWriter::Mode::append); }
  CHECK(read_text("new.csv") == "a\n");  // created with its header
  std::ofstream(dir / "k.csv") << "epoch,step,loss\n1,4,0.5\n2,8,0.4\n2,6,0.45\n3,12";  // last row cut off
  nn::output::keep_csv_rows_through((dir / "k.csv").string(), 1, 6);
  CHECK(read_text("k.csv") == "epoch,step,loss\n1,4,0.5\n2,6,0.45\n");
  nn::output::keep_csv_rows_through((dir / "absent.csv").string(), 0, 1);  // nothing to do
  // A key column past the header's, or the last one, would drop every row: refused, file kept.
  CHECK_THROWS_WITH(nn::output::keep_csv_rows_through((dir / "k.csv").string(), 2, 6),
                    Contains("has 3 column(s) in its header 'epoch,step,loss'; the key column 2 must be one of the first 2"));
  std::ofstream(dir / "notes.txt") << "free text\nmore text\n";
  CHECK_THROWS_WITH(nn::output::keep_csv_rows_through((dir / "notes.txt").string(), 0, 6), Contains("has 1 column(s)"));
  CHECK(read_text("k.csv") == "epoch,step,loss\n1,4,0.5\n2,6,0.45\n");
  CHECK(read_text("notes.txt") == "free text\nmore text\n");
  CHECK_FALSE(fs::exists(dir / "absent.csv"));
  {  // read_csv: the numbers back, whole numbers in full, nan and inf included
    nn::output::CsvWriter csv((dir / "r.csv").string(), {"step", "loss"});
    csv.row(std::vector<double>{12345678, 0.125});
    csv.row(std::vector<double>{12345679, std::numeric_limits<double>::quiet_NaN()});
    csv.row(std::vector<double>{12345680, -std::numeric_limits<double>::infinity()});
  }
  const auto table = nn::output::read_csv((dir / "r.csv").string());
  CHECK(table.header == std::vector<std::string>{"step", "loss"});
  CHECK(table.column("step") == std::vector<double>{12345678, 12345679, 12345680});
  CHECK(table.column("loss")[0] == 0.125);
  CHECK(std::isnan(table.column("loss")[1]));
  CHECK(table.column("loss")[2] == -std::numeric_limits<double>::infinity());
  CHECK_THROWS_WITH(table.column("epoch"), Contains("no column 'epoch' (the columns are step, loss)"));
  std::ofstream(dir / "r.csv", std::ios::app) << "4,x\n";
  CHECK_THROWS_WITH(nn::output::read_csv((dir / "r.csv").string()), Contains("r.csv' line 5: '4,x' is not a row of numbers"));
  std::ofstream(dir / "r.csv") << "a,b\n1\n";
  CHECK_THROWS_WITH(nn::output::read_csv((dir / "r.csv").string()), Contains("line 2 has 1 values for the 2 columns"));
  std::ofstream(dir / "r.csv") << "";
  CHECK_THROWS_WITH(nn::output::read_csv((dir / "r.csv").string()), Contains("is empty (no header)"));
  std::ofstream(dir / "r.csv") << "a,b\r\n1,2\r\n";  // Windows line endings
  CHECK(nn::output::read_csv((dir / "r.csv").string()).header == std::vector<std::string>{"a", "b"});
  CHECK(nn::output::read_csv((dir / "r.csv").string()).rows == std::vector<std::vector<double>>{{1, 2}});
  {  // A cell or a column name holding a separator would shift the columns: refused.
    CHECK_THROWS_WITH(nn::output::CsvWriter((dir / "c.csv").string(), {"a,b", "c"}), Contains("the column name 'a,b' is empty or contains"));
    nn::output::CsvWriter csv((dir / "c.csv").string(), {"name", "fd"});
    CHECK_THROWS_WITH(csv.row(std::vector<std::string>{"heun, 9", "1.5"}), Contains("the value 'heun, 9' of column 0 contains a comma"));
    csv.row(std::vector<std::string>{"heun", "1.5"});
  }
  CHECK(read_text("c.csv") == "name,fd\nheun,1.5\n");
  { nn::output::CsvWriter again((dir / "m.csv").string(), {"step", "loss"}); }
  CHECK(read_text("m.csv") == "step,loss\n");  // replace starts over
  nn::output::plot_svg((dir / "p.svg").string(), {{"train", {1, 2, 3}, {1.0, 0.5, 0.25}}, {"test", {1, 3}, {1.2, 0.4}}},
                       {.title = "loss", .log_y = true});
  std::ifstream svg(dir / "p.svg");
  std::string s((std::istreambuf_iterator<char>(svg)), {});
  CHECK_THAT(s, Contains("<polyline"));
  CHECK_THAT(s, Contains(">train</text>"));
  {
    // The bar writes to stderr (here not a terminal: a line per tenth, at once for a first NaN).
    const std::string log = (dir / "bar.log").string();
    std::fflush(stderr);
    const int saved = ::dup(STDERR_FILENO), fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE((saved >= 0 && fd >= 0));
    ::dup2(fd, STDERR_FILENO);
    nn::output::ProgressBar bar(100, "test");
    for (int i = 1; i <= 100; ++i) bar.update(i, i == 3 || i == 50 ? std::nan("") : 1.0 / i);
    bar.finish();
    std::fflush(stderr);
    ::dup2(saved, STDERR_FILENO);
    ::close(fd);
    ::close(saved);
    const std::string text = read_text("bar.log");
    CHECK_THAT(text, Contains("test [........................]   3%  3/100"));  // drawn at the first NaN
    CHECK_THAT(text, Contains("1 non-finite loss (last nan)"));
    CHECK_THAT(text, Contains("100/100"));
    CHECK_THAT(text, Contains("2 non-finite losses (last nan)"));
  }
  CHECK_THROWS_WITH(nn::output::save_png((dir / "x.png").string(), zeros({2, 4, 4})), Contains("expected 1 or 3 channels"));
  {
    const nn::output::RunFolderLock first(dir.string());
    CHECK_THROWS_WITH(nn::output::RunFolderLock(dir.string()), Contains("is in use (locked through"));
  }
  CHECK_NOTHROW(nn::output::RunFolderLock(dir.string()));  // released with its holder
  CHECK_THROWS_WITH(nn::output::RunFolderLock((dir / "missing").string()), Contains("cannot open its lock file"));
  // check_writable: what a later write would fail on, refused up front.
  CHECK_NOTHROW(nn::output::check_writable((dir / "new.png").string(), "predict"));
  CHECK_THROWS_WITH(nn::output::check_writable((dir / "missing" / "x.png").string(), "predict"),
                    Contains("predict: cannot write '" + (dir / "missing" / "x.png").string() + "': folder '" +
                             (dir / "missing").string() + "' does not exist"));
  CHECK_THROWS_WITH(nn::output::check_writable(dir.string(), "sample"), Contains("it exists and is not a regular file"));
  std::ofstream(dir / "afile") << "x";
  CHECK_THROWS_WITH(nn::output::check_writable((dir / "afile" / "y.png").string(), "sample"),
                    Contains("is not a folder (a file of that name is in the way)"));
  CHECK_THROWS_WITH(nn::output::save_image_grid((dir / "g.png").string(), zeros({3, 1, 4, 4}), {.captions = {"a", "b", "c"}, .caption_red = {true}}),
                    Contains("1 caption colours (caption_red) for 3 images"));
  CHECK_THROWS_WITH(nn::output::save_image_grid((dir / "g.png").string(), zeros({3, 1, 4, 4}), {.scale = std::int64_t{1} << 40}),
                    Contains("pixel grid is too large"));
  fs::remove_all(dir);
}

TEST_CASE("StopOnSignal turns the first SIGINT / SIGTERM into a flag and restores the handlers", "[nn][output]") {
  struct sigaction before {};
  ::sigaction(SIGINT, nullptr, &before);
  {
    const nn::StopOnSignal stop;
    CHECK_FALSE(nn::stop_requested());
    CHECK_THROWS_WITH(nn::StopOnSignal(), Contains("only one may be alive at a time"));
    std::raise(SIGTERM);  // would end the process without the handler
    CHECK(nn::stop_requested());
    CHECK(nn::stop_signal() == SIGTERM);
  }
  struct sigaction now {};
  ::sigaction(SIGINT, nullptr, &now);
  CHECK(now.sa_handler == before.sa_handler);  // the test runner's own handler is back
  {
    const nn::StopOnSignal again;  // a new one starts with the flag down
    CHECK_FALSE(nn::stop_requested());
    CHECK(nn::stop_signal() == 0);
  }
  // An ignored signal (a shell's background job ignores SIGINT) stays ignored.
  struct sigaction ignore {}, saved {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGTERM, &ignore, &saved);
  {
    const nn::StopOnSignal stop;
    ::sigaction(SIGTERM, nullptr, &now);
    CHECK(now.sa_handler == SIG_IGN);
    std::raise(SIGTERM);
    CHECK_FALSE(nn::stop_requested());
  }
  ::sigaction(SIGTERM, &saved, nullptr);
}
