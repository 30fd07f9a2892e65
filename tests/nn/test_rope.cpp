// N-D rotary embeddings and the multimodal position schemes (spec techniques-A §1.7): text-only
// input equals RoPE-1D bit for bit under every 2-D/3-D scheme, norm preservation, the relative
// property, the worked position tables, the symmetry/equivalence identities, RoPE-TV's intra-image
// shape invariance (and v1's failure of it), and the M-RoPE fixtures.
#include <catch2/catch.hpp>

#include <limits>

#include <array>
#include <cmath>

#include "core/autograd.hpp"
#include "nn/rope.hpp"
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "tests/support/helpers.hpp"

using namespace tg;
using Catch::Matchers::Contains;
using nn::PositionBuilder;
using nn::PositionConfig;
using nn::PositionScheme;

namespace {

// The positions of a builder as rows of doubles.
std::vector<std::vector<double>> rows(const PositionBuilder& pb) {
  std::vector<std::vector<double>> r;
  for (std::int64_t t = 0; t < pb.size(); ++t) {
    r.emplace_back();
    for (std::int64_t a = 0; a < pb.axes(); ++a) r.back().push_back(pb.at(t, a));
  }
  return r;
}

// <rope(q, p), rope(k, p')> for single vectors q, k [d] (f64) at positions p, p' [A].
double rotated_dot(const nn::Rope& rope, const Tensor& q, const Tensor& k, const std::vector<double>& p,
                   const std::vector<double>& pk) {
  const std::int64_t A = rope.axes, d = rope.head_dim;
  const Tensor rq = rope(q.reshape({1, d}), from_vector(p, {1, A}));
  const Tensor rk = rope(k.reshape({1, d}), from_vector(pk, {1, A}));
  return ops::sum(rq * rk).item();
}

}  // namespace

TEST_CASE("rope: tables follow Su's formula for any axis map and both layouts", "[nn][rope]") {
  const std::int64_t d = 12, T = 5;
  const Tensor x = test::randn({2, T, d}, DType::f64, 1);
  const Tensor pos = test::uniform({T, 2}, -50, 50, DType::f64, 2);
  for (const bool sections : {false, true})
    for (const auto layout : {ops::RotaryLayout::interleaved, ops::RotaryLayout::half_split}) {
      nn::RopeOptions o{.base = 100.0, .layout = layout};
      if (sections) o.sections = {2, 4};
      const nn::Rope rope(d, 2, o);
      const std::vector<std::int64_t> want_map =
          sections ? std::vector<std::int64_t>{0, 0, 1, 1, 1, 1} : std::vector<std::int64_t>{0, 1, 0, 1, 0, 1};
      CHECK(rope.axis_map == want_map);
      const Tensor y = rope(x, pos);  // [2, T, d]
      // Naive: pair i = (2i, 2i+1) or (i, i + d/2), angle p[a(i)] * base^(-2i/d).
      std::vector<double> want(static_cast<std::size_t>(2 * T * d));
      for (std::int64_t b = 0; b < 2; ++b)
        for (std::int64_t t = 0; t < T; ++t)
          for (std::int64_t i = 0; i < d / 2; ++i) {
            const double angle = pos.at<double>({t, want_map[static_cast<std::size_t>(i)]}) *
                                 std::pow(100.0, -2.0 * static_cast<double>(i) / d);
            const std::int64_t i0 = layout == ops::RotaryLayout::interleaved ? 2 * i : i;
            const std::int64_t i1 = layout == ops::RotaryLayout::interleaved ? 2 * i + 1 : i + d / 2;
            const double a = x.at<double>({b, t, i0}), c = x.at<double>({b, t, i1});
            want[static_cast<std::size_t>((b * T + t) * d + i0)] = a * std::cos(angle) - c * std::sin(angle);
            want[static_cast<std::size_t>((b * T + t) * d + i1)] = a * std::sin(angle) + c * std::cos(angle);
          }
      CHECK_ALLCLOSE(y, from_vector(want, {2, T, d}), 1e-12, 1e-12);
    }
}

TEST_CASE("rope: angles are computed in f64 before the cast", "[nn][rope]") {
  // A large half-integer position (the spec's pitfall: an f32 product has ~1e-2 rad error here).
  const double p = 123456.5;
  const nn::Rope rope(8, 1, {.base = 10000.0});
  const nn::RotaryTables f32 = rope.tables(from_vector(std::vector<double>{p}, {1, 1}), DType::f32);
  const nn::RotaryTables f64 = rope.tables(from_vector(std::vector<double>{p}, {1, 1}), DType::f64);
  CHECK(f32.cos.dtype() == DType::f32);
  for (std::int64_t i = 0; i < 4; ++i) {
    const double angle = p * std::pow(10000.0, -2.0 * static_cast<double>(i) / 8);
    CHECK(f64.cos.at<double>({0, i}) == std::cos(angle));
    CHECK(f64.sin.at<double>({0, i}) == std::sin(angle));
    CHECK(f32.cos.at<float>({0, i}) == static_cast<float>(std::cos(angle)));
    CHECK(f32.sin.at<float>({0, i}) == static_cast<float>(std::sin(angle)));
  }
}

TEST_CASE("rope: text-only input under every 2-D/3-D scheme equals RoPE-1D bit for bit", "[nn][rope]") {
  const std::int64_t d = 16, N = 40;
  const Tensor q = test::randn({2, 3, N, d}, DType::f32, 3);  // [B, H, T, d]: every n and every head
  for (const double start : {0.0, 1.0, 1e5})
    for (const auto layout : {ops::RotaryLayout::interleaved, ops::RotaryLayout::half_split}) {
      PositionBuilder flat(PositionConfig{.scheme = PositionScheme::flat1d, .start = start});
      flat.add_text(N);
      const nn::Rope rope1(d, 1, {.base = 1000.0, .layout = layout});
      const Tensor want = rope1(q, flat.positions());
      const nn::RotaryTables t1 = rope1.tables(flat.positions());
      for (const std::string name : {"tie_v1", "tie_v1_real", "tv", "mrope2d", "tv3d", "mrope", "tie_v1_3d"}) {
        PositionConfig c = nn::parse_positions(name);
        c.start = start;
        PositionBuilder pb(c);
        pb.add_text(N);
        CHECK(pb.next_text() == flat.next_text());
        for (const bool mrope_sections : {false, true}) {
          nn::RopeOptions o{.base = 1000.0, .layout = layout};
          if (mrope_sections) o.sections = pb.axes() == 3 ? std::vector<std::int64_t>{2, 3, 3} : std::vector<std::int64_t>{4, 4};
          const nn::Rope rope(d, pb.axes(), o);
          INFO(name << " start " << start << (mrope_sections ? " sections" : " interleaved axis map"));
          const nn::RotaryTables t = rope.tables(pb.positions());
          CHECK(test::same_bits(t.cos, t1.cos));
          CHECK(test::same_bits(t.sin, t1.sin));
          CHECK(test::same_bits(rope(q, pb.positions()), want));
        }
      }
    }
}

TEST_CASE("rope: rotations preserve the norm", "[nn][rope]") {
  const std::int64_t d = 64;
  const Tensor q = test::randn({16, d}, DType::f32, 4);
  const Tensor pos = test::uniform({16, 2}, 0, 1e4, DType::f64, 5);
  for (const auto layout : {ops::RotaryLayout::interleaved, ops::RotaryLayout::half_split}) {
    const Tensor y = nn::Rope(d, 2, {.layout = layout})(q, pos);
    const Tensor n0 = ops::sqrt(ops::sum(ops::square(q.to(DType::f64)), {1}));
    const Tensor n1 = ops::sqrt(ops::sum(ops::square(y.to(DType::f64)), {1}));
    CHECK_ALLCLOSE(n1, n0, 1e-6, 0.0);
  }
}

TEST_CASE("rope: the score depends only on the relative position", "[nn][rope]") {
  const std::int64_t d = 32;
  Generator gen(6);
  // Every pair layout and axis map: interleaved i mod A, and Qwen2-VL-style contiguous sections.
  const std::vector<std::vector<std::int64_t>> sections{{16}, {6, 10}, {4, 6, 6}};
  struct Variant {
    std::int64_t axes;
    ops::RotaryLayout layout;
    bool sectioned;
  };
  std::vector<Variant> variants;
  for (const std::int64_t axes : {1, 2, 3})
    for (const auto layout : {ops::RotaryLayout::interleaved, ops::RotaryLayout::half_split})
      for (const bool sectioned : {false, true}) variants.push_back({axes, layout, sectioned});
  for (const Variant& v : variants) {
    INFO("axes " << v.axes << " half_split " << (v.layout == ops::RotaryLayout::half_split) << " sections "
                 << v.sectioned);
    const std::int64_t axes = v.axes;
    const nn::RopeOptions options{
        .layout = v.layout,
        .sections = v.sectioned ? sections[static_cast<std::size_t>(axes - 1)] : std::vector<std::int64_t>{}};
    const nn::Rope rope(d, axes, options);
    for (int trial = 0; trial < 20; ++trial) {
      const Tensor q = test::randn({d}, DType::f64, 100 + trial), k = test::randn({d}, DType::f64, 200 + trial);
      std::vector<double> p, pk, c;
      for (std::int64_t a = 0; a < axes; ++a) {
        p.push_back(1e3 * gen.uniform());
        pk.push_back(1e3 * gen.uniform());
        c.push_back(200 * gen.uniform() - 100);
      }
      std::vector<double> pc = p, pkc = pk;
      for (std::int64_t a = 0; a < axes; ++a) {
        pc[static_cast<std::size_t>(a)] += c[static_cast<std::size_t>(a)];
        pkc[static_cast<std::size_t>(a)] += c[static_cast<std::size_t>(a)];
      }
      const double s0 = rotated_dot(rope, q, k, p, pk), s1 = rotated_dot(rope, q, k, pc, pkc);
      CHECK(std::abs(s0 - s1) <= 1e-10);
      // f32: unit-scale vectors, positions up to 1e3.
      const Tensor q32 = (q / std::sqrt(static_cast<double>(d))).to(DType::f32);
      const Tensor k32 = (k / std::sqrt(static_cast<double>(d))).to(DType::f32);
      const double f0 = rotated_dot(rope, q32, k32, p, pk), f1 = rotated_dot(rope, q32, k32, pc, pkc);
      CHECK(std::abs(f0 - f1) <= 1e-4);
    }
  }
}

TEST_CASE("positions: the worked examples of spec §1.3", "[nn][rope]") {
  // Text at 1, 2, 3 (L = 3), a 2 x 3 image, two text tokens.
  using R = std::vector<std::vector<double>>;
  SECTION("RoPE-Tie v1: s = w + 1 = 4, t = h + 1 = 3") {
    PositionBuilder pb(PositionConfig{.scheme = PositionScheme::tie_v1, .start = 1});
    pb.add_text(3).add_image(2, 3).add_text(2);
    CHECK(rows(pb) == R{{1, 1}, {2, 2}, {3, 3}, {7, 6}, {7, 9}, {7, 12}, {11, 6}, {11, 9}, {11, 12}, {15, 15}, {16, 16}});
    CHECK(pb.next_text() == 17);
  }
  SECTION("RoPE-TV: beta = (5, 4.5)") {
    PositionBuilder pb(PositionConfig{.scheme = PositionScheme::tv, .start = 1});
    pb.add_text(3).add_image(2, 3).add_text(2);
    CHECK(rows(pb) ==
          R{{1, 1}, {2, 2}, {3, 3}, {6, 5.5}, {6, 6.5}, {6, 7.5}, {7, 5.5}, {7, 6.5}, {7, 7.5}, {10, 10}, {11, 11}});
  }
  SECTION("RoPE-Tie v1 with real spacing: s = 7/3, t = 7/4, next text at L + wh + 1") {
    PositionBuilder pb(PositionConfig{.scheme = PositionScheme::tie_v1_real, .start = 1});
    pb.add_text(3).add_image(2, 3).add_text(1);
    const R r = rows(pb);
    const double s = 7.0 / 3.0, t = 7.0 / 4.0;
    for (int i = 1; i <= 2; ++i)
      for (int j = 1; j <= 3; ++j) {
        CHECK(r[static_cast<std::size_t>(2 + (i - 1) * 3 + j)][0] == Approx(3 + i * s).epsilon(1e-15));
        CHECK(r[static_cast<std::size_t>(2 + (i - 1) * 3 + j)][1] == Approx(3 + j * t).epsilon(1e-15));
      }
    CHECK(r.back() == std::vector<double>{10, 10});
  }
  SECTION("M-RoPE (Qwen2-VL, 0-based, axes t, h, w)") {
    PositionBuilder pb(nn::parse_positions("mrope"));
    pb.add_text(3).add_image(2, 3).add_text(2);
    CHECK(rows(pb) == R{{0, 0, 0}, {1, 1, 1}, {2, 2, 2}, {3, 3, 3}, {3, 3, 4}, {3, 3, 5}, {3, 4, 3}, {3, 4, 4},
                        {3, 4, 5}, {6, 6, 6}, {7, 7, 7}});
    const std::vector<nn::TokenKind> kinds = pb.kinds();
    CHECK(kinds[2] == nn::TokenKind::text);
    CHECK(kinds[3] == nn::TokenKind::patch);
    CHECK(pb.is_patch().to_vector<bool>() == std::vector<bool>{0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0});
  }
  SECTION("flat RoPE-1D and [IMG]/[/IMG] markers") {
    PositionBuilder pb(PositionConfig{.scheme = PositionScheme::flat1d, .start = 1});
    pb.add_text(3).add_image(2, 3, /*markers=*/true).add_text(2);
    CHECK(rows(pb) == R{{1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}});
    CHECK(pb.kinds()[3] == nn::TokenKind::image_begin);
    CHECK(pb.kinds()[10] == nn::TokenKind::image_end);
  }
  SECTION("plain RoPE-2D: one image, no text") {
    PositionBuilder pb(nn::parse_positions("rope2d"));
    pb.add_image(2, 2);
    CHECK(rows(pb) == R{{0, 0}, {0, 1}, {1, 0}, {1, 1}});
    CHECK_THROWS_WITH(pb.add_text(1), Contains("single image (no text or markers)"));
    CHECK_THROWS_WITH(pb.add_image(1, 1), Contains("hold a single image"));
  }
}

TEST_CASE("positions: symmetry and equivalence identities for random (L, h, w)", "[nn][rope]") {
  Generator gen(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t L = gen.randint(1, 100), h = gen.randint(1, 65), w = gen.randint(1, 65);
    const bool markers = trial % 2 == 1;
    for (const auto s : {PositionScheme::tie_v1, PositionScheme::tie_v1_real, PositionScheme::tv}) {
      PositionBuilder pb(PositionConfig{.scheme = s, .start = 1});
      pb.add_text(L).add_image(h, w, markers).add_text(1);
      // With markers, the [IMG] token is the last text-like token before the image.
      const std::int64_t last_text = L - 1 + (markers ? 1 : 0), first_patch = last_text + 1;
      const std::int64_t last_patch = first_patch + h * w - 1, next_text = last_patch + 1;
      INFO("scheme " << static_cast<int>(s) << " L " << L << " h " << h << " w " << w << " markers " << markers);
      const double Lp = pb.at(last_text, 0), K = pb.at(next_text, 0);
      CHECK(Lp == static_cast<double>(L + (markers ? 1 : 0)));
      for (std::int64_t a = 0; a < 2; ++a) {
        const double before = pb.at(first_patch, a) - pb.at(last_text, a);
        const double after = pb.at(next_text, a) - pb.at(last_patch, a);
        if (s == PositionScheme::tie_v1_real) CHECK(before == Approx(after).epsilon(1e-12));
        else CHECK(before == after);  // integers and half-integers are exact in f64
      }
      const double span = K - Lp;
      if (s == PositionScheme::tie_v1) CHECK(span == static_cast<double>((w + 1) * (h + 1)));
      else CHECK(span == Approx(static_cast<double>(w * h + 1)).epsilon(1e-14));
      CHECK(pb.at(next_text, 0) == pb.at(next_text, 1));  // text stays on the diagonal
    }
  }
}

// The spec's §1.3 rules written out per scheme, for a whole layout of text runs and images (with or
// without [IMG]/[/IMG] markers), as an independent check of the builder on sequences with several
// images: text between images, images back to back, a sequence that starts with an image.
namespace {

struct LayoutItem {
  bool image;
  std::int64_t h, w;  // text: h tokens
  bool markers;
};

std::vector<std::vector<double>> spec_positions(const std::string& scheme, double start,
                                                const std::vector<LayoutItem>& layout, double* next_text) {
  const bool three = scheme == "tv3d" || scheme == "mrope" || scheme == "tie_v1_3d";
  const std::size_t A = scheme == "flat1d" ? 1 : three ? 3 : 2;
  std::vector<std::vector<double>> rows;
  double n = start;  // the next text position
  auto text = [&] {
    rows.emplace_back(A, n);
    n += 1;
  };
  for (const LayoutItem& it : layout) {
    if (!it.image) {
      for (std::int64_t i = 0; i < it.h; ++i) text();
      continue;
    }
    if (it.markers) text();
    const double L = n - 1, h = static_cast<double>(it.h), w = static_cast<double>(it.w), N = h * w;
    for (std::int64_t i = 1; i <= it.h; ++i)
      for (std::int64_t j = 1; j <= it.w; ++j) {
        const double di = static_cast<double>(i), dj = static_cast<double>(j);
        if (scheme == "flat1d") rows.push_back({L + (di - 1) * w + dj});
        else if (scheme == "tie_v1") rows.push_back({L + di * (w + 1), L + dj * (h + 1)});  // s = w + 1, t = h + 1
        else if (scheme == "tie_v1_real") rows.push_back({L + di * ((N + 1) / (h + 1)), L + dj * ((N + 1) / (w + 1))});
        else if (scheme == "tv") rows.push_back({L + (N - h) / 2 + di, L + (N - w) / 2 + dj});  // beta + k, gamma = 1
        else if (scheme == "mrope2d") rows.push_back({L + di, L + dj});
        // 3 axes (t, h, w): an image is one frame, d_t = 1.
        else if (scheme == "tv3d") rows.push_back({L + (N - 1) / 2 + 1, L + (N - h) / 2 + di, L + (N - w) / 2 + dj});
        else if (scheme == "mrope") rows.push_back({L + 1, L + di, L + dj});
        else if (scheme == "tie_v1_3d") {  // P = 2 (h + 1)(w + 1), s_a = P / (d_a + 1)
          const double P = 2 * (h + 1) * (w + 1);
          rows.push_back({L + P / 2, L + di * (P / (h + 1)), L + dj * (P / (w + 1))});
        }
      }
    if (scheme == "tie_v1") n = L + (w + 1) * (h + 1);
    else if (scheme == "tie_v1_3d") n = L + 2 * (w + 1) * (h + 1);
    else if (scheme == "mrope2d" || scheme == "mrope") n = L + std::max(h, w) + 1;
    else n = L + N + 1;
    if (it.markers) text();
  }
  *next_text = n;
  return rows;
}

}  // namespace

TEST_CASE("positions: layouts with several images follow the spec's rules", "[nn][rope]") {
  Generator gen(11);
  const std::vector<std::string> schemes{"flat1d", "tie_v1", "tie_v1_real", "tv", "mrope2d", "tv3d", "mrope", "tie_v1_3d"};
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<LayoutItem> layout;
    const std::int64_t items = gen.randint(1, 6);
    for (std::int64_t i = 0; i < items; ++i) {
      if (gen.uniform() < 0.4) layout.push_back({false, gen.randint(1, 5), 0, false});
      else layout.push_back({true, gen.randint(1, 6), gen.randint(1, 7), gen.uniform() < 0.5});
    }
    const double start = std::array<double, 3>{0, 1, 7}[static_cast<std::size_t>(trial % 3)];
    for (const std::string& scheme : schemes) {
      PositionConfig config = nn::parse_positions(scheme);
      config.start = start;
      PositionBuilder pb(config);
      std::vector<bool> patch;
      for (const LayoutItem& it : layout) {
        if (!it.image) pb.add_text(it.h);
        else pb.add_image(it.h, it.w, it.markers);
        for (std::int64_t i = 0; i < (it.image ? it.h * it.w + (it.markers ? 2 : 0) : it.h); ++i)
          patch.push_back(it.image && !(it.markers && (i == 0 || i == it.h * it.w + 1)));
      }
      double next = 0;
      const auto expected = spec_positions(scheme, start, layout, &next);
      INFO("trial " << trial << " scheme " << scheme);
      const auto got = rows(pb);
      REQUIRE(got.size() == expected.size());
      for (std::size_t t = 0; t < got.size(); ++t) {
        REQUIRE(got[t].size() == expected[t].size());
        for (std::size_t a = 0; a < got[t].size(); ++a) {
          INFO("token " << t << " axis " << a);
          // Integers and half-integers are exact; tie_v1_real's fractions agree to rounding.
          CHECK(got[t][a] == Approx(expected[t][a]).epsilon(1e-14).margin(0));
          if (scheme != "tie_v1_real") CHECK(got[t][a] == expected[t][a]);
        }
      }
      CHECK(pb.next_text() == Approx(next).epsilon(1e-14));
      CHECK(pb.is_patch().to_vector<bool>() == patch);
    }
  }
}

TEST_CASE("positions: RoPE-TV scores inside an image depend only on the patch offset (v1's do not)", "[nn][rope]") {
  const std::int64_t d = 16;
  const nn::Rope rope(d, 2, {.base = 100.0});
  const Tensor q = test::randn({d}, DType::f64, 8), k = test::randn({d}, DType::f64, 9);
  struct Image {
    std::int64_t L, h, w;
  };
  const std::vector<Image> images{{3, 2, 3}, {10, 5, 7}, {0, 4, 4}, {57, 9, 2}};
  // Pairs of patches (i, j) -> (i', j') (1-based) present in every image above.
  const std::vector<std::array<std::int64_t, 4>> pairs{{1, 1, 2, 2}, {1, 2, 2, 1}, {2, 1, 1, 1}, {1, 1, 1, 2}};
  for (const auto scheme : {PositionScheme::tv, PositionScheme::tie_v1}) {
    double worst = 0;
    for (const auto& pr : pairs) {
      std::vector<double> scores;
      for (const Image& im : images) {
        PositionBuilder pb(PositionConfig{.scheme = scheme, .start = 1});
        pb.add_text(im.L).add_image(im.h, im.w);
        auto patch = [&](std::int64_t i, std::int64_t j) {
          const std::int64_t t = im.L + (i - 1) * im.w + (j - 1);
          return std::vector<double>{pb.at(t, 0), pb.at(t, 1)};
        };
        scores.push_back(rotated_dot(rope, q, k, patch(pr[0], pr[1]), patch(pr[2], pr[3])));
      }
      for (const double s : scores) worst = std::max(worst, std::abs(s - scores[0]));
    }
    if (scheme == PositionScheme::tv) CHECK(worst <= 1e-10);
    else CHECK(worst > 1e-2);  // v1's spacing (w + 1, h + 1) depends on the image size, by design
  }
}

TEST_CASE("positions: M-RoPE matches the transformers docstring and continues decoding", "[nn][rope]") {
  // A video of 3 temporal x 2 height x 2 width patches at the start, then 5 text tokens.
  PositionBuilder pb(nn::parse_positions("mrope"));
  pb.add_video(3, 2, 2).add_text(5);
  const std::vector<double> t{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4, 5, 6, 7};
  const std::vector<double> h{0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 3, 4, 5, 6, 7};
  const std::vector<double> w{0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 3, 4, 5, 6, 7};
  const Tensor pos = pb.positions();
  CHECK(pos.dtype() == DType::f64);
  CHECK(test::same_bits(pos.select(1, 0).contiguous(), from_vector(t)));
  CHECK(test::same_bits(pos.select(1, 1).contiguous(), from_vector(h)));
  CHECK(test::same_bits(pos.select(1, 2).contiguous(), from_vector(w)));
  // HF's rope_delta = max position + 1 - prompt length: a new token at cache index c sits at c + delta.
  const double delta = 7 + 1 - 17;
  CHECK(pb.next_text() == 17 + delta);
  pb.add_text(1);
  CHECK(rows(pb).back() == std::vector<double>{17 + delta, 17 + delta, 17 + delta});
  // RoPE-TV in 3-D: beta_a = L + (N - d_a) / 2, next text at L + N + 1.
  PositionBuilder tv(nn::parse_positions("tv3d"));
  tv.add_text(1).add_video(3, 2, 2);
  CHECK(rows(tv)[1] == std::vector<double>{0 + 4.5 + 1, 0 + 5 + 1, 0 + 5 + 1});
  CHECK(tv.next_text() == 0 + 12 + 1);
}

TEST_CASE("rope: per-sequence positions and errors", "[nn][rope]") {
  const std::int64_t d = 8, T = 6;
  const nn::Rope rope(d, 2);
  const Tensor x = test::randn({2, 3, T, d}, DType::f32, 10);          // [B, H, T, d]
  const Tensor pos = test::uniform({2, T, 2}, 0, 20, DType::f64, 11);  // [B, T, A]
  const nn::RotaryTables t = rope.tables(pos);
  CHECK(t.cos.shape() == Shape{2, 1, T, d / 2});
  const Tensor y = rope(x, pos);
  for (std::int64_t b = 0; b < 2; ++b)
    CHECK(test::same_bits(y.select(0, b).contiguous(), rope(x.select(0, b).contiguous(), pos.select(0, b).contiguous())));
  CHECK_THROWS_WITH(rope.tables(test::uniform({T, 3}, 0, 1)), Contains("Rope::tables: expected positions [T, 2]"));
  CHECK_THROWS_WITH(rope.tables(test::uniform({T, 2}, 0, 1), DType::i64), Contains("the tables' dtype must be f32 or f64"));
  CHECK_THROWS_WITH(rope.tables(tensor({0.0, 1.0, 2.0, NAN}, {2, 2}, DType::f64)),
                    Contains("Rope::tables: positions must be finite, got nan at row 1 axis 1 (positions [2, 2])"));
  CHECK_THROWS_WITH(nn::Rope(d, 2, {.sections = {1, 2}}), Contains("sections [1, 2] sum to 3"));
  CHECK_THROWS_WITH(nn::Rope(7, 1), Contains("head_dim must be even"));
  CHECK_THROWS_WITH(nn::parse_positions("rope4d"), Contains("unknown position scheme 'rope4d'"));
  PositionBuilder tv(nn::parse_positions("tv"));
  CHECK_THROWS_WITH(tv.add_video(2, 2, 2), Contains("tv positions have 2 axes and no video rule"));
  CHECK_THROWS_WITH(tv.add_image(0, 3), Contains("need h, w >= 1"));
  // Absurd sizes are refused up front (not grown token by token until memory runs out).
  CHECK_THROWS_WITH(tv.positions(std::numeric_limits<std::int64_t>::max(), 2), Contains("2 rows from row 9223372036854775807 are outside"));
  CHECK_THROWS_WITH(nn::PositionBuilder(nn::PositionScheme::tv).add_text(std::int64_t{1} << 40),
                    Contains("a sequence holds at most 16777216 tokens"));
  CHECK_THROWS_WITH(nn::PositionBuilder(nn::PositionScheme::tv).add_image(100000, 100000), Contains("10000000000 patches do not fit"));
  CHECK_THROWS_WITH(nn::PositionBuilder(nn::PositionConfig{.scheme = nn::PositionScheme::tv, .axes = 3}).add_video(1 << 20, 1 << 20, 1 << 20),
                    Contains("patches do not fit"));
  CHECK_THROWS_WITH(PositionBuilder(PositionConfig{.scheme = PositionScheme::flat1d, .axes = 2}),
                    Contains("flat1d positions have 1 axis"));
  CHECK_THROWS_WITH(tv.positions(0, 1), Contains("outside the 0 tokens"));
  // A start so large that steps of 1 vanish in doubles (1e17 + 1 == 1e17) is refused.
  CHECK_THROWS_WITH(PositionBuilder(PositionConfig{.scheme = PositionScheme::tv, .start = 1e17}),
                    Contains("start must be finite and within +-2^40, got 1e+17"));
  CHECK_NOTHROW(PositionBuilder(PositionConfig{.scheme = PositionScheme::tv, .start = -1e6}));
}
