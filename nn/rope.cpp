#include "nn/rope.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace tg::nn {

// ---- rotary tables --------------------------------------------------------------------------------------------

std::vector<std::int64_t> interleaved_axis_map(std::int64_t pairs, std::int64_t axes) {
  TG_CHECK(pairs >= 0 && axes >= 1, "interleaved_axis_map: need pairs >= 0 and axes >= 1, got {} and {}", pairs, axes);
  std::vector<std::int64_t> m(static_cast<std::size_t>(pairs));
  for (std::int64_t i = 0; i < pairs; ++i) m[static_cast<std::size_t>(i)] = i % axes;
  return m;
}

std::vector<std::int64_t> sectioned_axis_map(const std::vector<std::int64_t>& sections) {
  std::vector<std::int64_t> m;
  for (std::size_t a = 0; a < sections.size(); ++a) {
    TG_CHECK(sections[a] >= 0, "sectioned_axis_map: section {} has negative size {}", a, sections[a]);
    m.insert(m.end(), static_cast<std::size_t>(sections[a]), static_cast<std::int64_t>(a));
  }
  return m;
}

Rope::Rope(std::int64_t d, std::int64_t a, const RopeOptions& o) : head_dim(d), axes(a), layout(o.layout) {
  TG_CHECK(d > 0 && d % 2 == 0, "Rope: head_dim must be even and positive, got {}", d);
  TG_CHECK(a >= 1, "Rope: need at least one position axis, got {}", a);
  TG_CHECK(o.base > 0, "Rope: base must be positive, got {}", o.base);
  const std::int64_t pairs = d / 2;
  if (o.sections.empty()) {
    axis_map = interleaved_axis_map(pairs, a);
  } else {
    TG_CHECK(static_cast<std::int64_t>(o.sections.size()) == a, "Rope: {} sections given for {} position axes",
             o.sections.size(), a);
    const std::int64_t total = std::accumulate(o.sections.begin(), o.sections.end(), std::int64_t{0});
    TG_CHECK(total == pairs, "Rope: sections [{}] sum to {} but head_dim {} has {} frequency pairs",
             fmt::join(o.sections, ", "), total, d, pairs);
    axis_map = sectioned_axis_map(o.sections);
  }
  theta.resize(static_cast<std::size_t>(pairs));
  for (std::int64_t i = 0; i < pairs; ++i)
    theta[static_cast<std::size_t>(i)] = std::pow(o.base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
}

RotaryTables Rope::tables(const Tensor& positions, DType dtype) const {
  TG_CHECK(head_dim > 0, "Rope::tables: the Rope is not initialised (default-constructed)");
  TG_CHECK(positions.defined(), "Rope::tables: positions are undefined");
  TG_CHECK((positions.dim() == 2 || positions.dim() == 3) && positions.shape().back() == axes,
           "Rope::tables: expected positions [T, {}] or [B, T, {}], got {}", axes, axes, positions.shape());
  TG_CHECK(positions.dtype() != DType::boolean, "Rope::tables: positions must be numeric, got {}", positions.dtype());
  TG_CHECK(is_floating(dtype), "Rope::tables: the tables' dtype must be f32 or f64 (cos/sin), got {}", dtype);
  const std::int64_t rows = positions.numel() / axes, pairs = head_dim / 2;
  const std::vector<double> p = positions.to(DType::f64).contiguous().to_vector<double>();
  for (std::size_t k = 0; k < p.size(); ++k)
    TG_CHECK(std::isfinite(p[k]), "Rope::tables: positions must be finite, got {} at row {} axis {} (positions {})", p[k],
             static_cast<std::int64_t>(k) / axes, static_cast<std::int64_t>(k) % axes, positions.shape());
  std::vector<double> c(static_cast<std::size_t>(rows * pairs)), s(c.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < pairs; ++i) {
      const double angle = p[static_cast<std::size_t>(r * axes + axis_map[static_cast<std::size_t>(i)])] *
                           theta[static_cast<std::size_t>(i)];
      c[static_cast<std::size_t>(r * pairs + i)] = std::cos(angle);
      s[static_cast<std::size_t>(r * pairs + i)] = std::sin(angle);
    }
  Shape shape{rows, pairs};
  if (positions.dim() == 3) shape = Shape{positions.shape()[0], 1, positions.shape()[1], pairs};
  return {from_vector(c, shape).to(dtype), from_vector(s, shape).to(dtype), layout};
}

Tensor Rope::operator()(const Tensor& x, const Tensor& positions) const {
  TG_CHECK(x.defined() && x.dim() >= 2 && x.shape().back() == head_dim,
           "Rope: expected x [..., T, {}], got {}", head_dim, x.defined() ? x.shape() : Shape{});
  const RotaryTables t = tables(positions, x.dtype());
  return ops::apply_rotary(x, t.cos, t.sin, t.layout);
}

// ---- position assignment --------------------------------------------------------------------------------------

namespace {

std::int64_t default_axes(PositionScheme s) {
  switch (s) {
    case PositionScheme::flat1d: return 1;
    case PositionScheme::mrope: return 3;
    default: return 2;
  }
}

const char* scheme_name(PositionScheme s) {
  switch (s) {
    case PositionScheme::flat1d: return "flat1d";
    case PositionScheme::rope2d: return "rope2d";
    case PositionScheme::tie_v1: return "tie_v1";
    case PositionScheme::tie_v1_real: return "tie_v1_real";
    case PositionScheme::tv: return "tv";
    case PositionScheme::mrope: return "mrope";
  }
  return "?";
}

}  // namespace

PositionConfig parse_positions(const std::string& name) {
  using S = PositionScheme;
  if (name == "flat1d") return {S::flat1d, 1};
  if (name == "rope2d") return {S::rope2d, 2};
  if (name == "rope3d") return {S::rope2d, 3};
  if (name == "tie_v1") return {S::tie_v1, 2};
  if (name == "tie_v1_3d") return {S::tie_v1, 3};
  if (name == "tie_v1_real") return {S::tie_v1_real, 2};
  if (name == "tie_v1_real_3d") return {S::tie_v1_real, 3};
  if (name == "tv") return {S::tv, 2};
  if (name == "tv3d") return {S::tv, 3};
  if (name == "mrope") return {S::mrope, 3};
  if (name == "mrope2d") return {S::mrope, 2};
  TG_FAIL(
      "parse_positions: unknown position scheme '{}' (expected flat1d, rope2d, rope3d, tie_v1, tie_v1_3d, tie_v1_real, "
      "tie_v1_real_3d, tv, tv3d, mrope, mrope2d)",
      name);
}

std::string positions_name(const PositionConfig& c) {
  const std::int64_t axes = c.axes > 0 ? c.axes : default_axes(c.scheme);
  switch (c.scheme) {
    case PositionScheme::flat1d: return "flat1d";
    case PositionScheme::rope2d: return axes == 3 ? "rope3d" : "rope2d";
    case PositionScheme::mrope: return axes == 2 ? "mrope2d" : "mrope";
    case PositionScheme::tv: return axes == 3 ? "tv3d" : "tv";
    default: return std::string(scheme_name(c.scheme)) + (axes == 3 ? "_3d" : "");
  }
}

PositionBuilder::PositionBuilder(const PositionConfig& c) : config_(c), next_(c.start) {
  axes_ = c.axes > 0 ? c.axes : default_axes(c.scheme);
  if (c.scheme == PositionScheme::flat1d)
    TG_CHECK(axes_ == 1, "PositionBuilder: flat1d positions have 1 axis, got axes = {}", c.axes);
  else
    TG_CHECK(axes_ == 2 || axes_ == 3, "PositionBuilder: {} positions have 2 axes (h, w) or 3 (t, h, w), got axes = {}",
             scheme_name(c.scheme), c.axes);
  // Positions are doubles that step by 1 (by halves in some layouts): exact up to 2^40 and well
  // beyond, while far beyond (1e17) the steps vanish and every position collapses to one value.
  TG_CHECK(std::isfinite(c.start) && std::fabs(c.start) <= 0x1p40,
           "PositionBuilder: start must be finite and within +-2^40, got {}", c.start);
  config_.axes = axes_;
}

void PositionBuilder::text_like(TokenKind kind) {
  TG_CHECK(config_.scheme != PositionScheme::rope2d,
           "PositionBuilder: {} positions are for a single image (no text or markers); use tv, tie_v1, mrope or flat1d "
           "for text",
           positions_name(config_));
  kinds_.push_back(kind);
  pos_.insert(pos_.end(), static_cast<std::size_t>(axes_), next_);
  next_ += 1;
}

PositionBuilder& PositionBuilder::add_text(std::int64_t k) {
  TG_CHECK(k >= 0 && k <= PositionBuilder::kMaxTokens - size(),
           "PositionBuilder::add_text: count must be in 0..{} (a sequence holds at most {} tokens; {} so far), got {}",
           PositionBuilder::kMaxTokens - size(), PositionBuilder::kMaxTokens, size(), k);
  for (std::int64_t i = 0; i < k; ++i) text_like(TokenKind::text);
  return *this;
}

PositionBuilder& PositionBuilder::add_image(std::int64_t h, std::int64_t w, bool markers) {
  TG_CHECK(h >= 1 && w >= 1, "PositionBuilder::add_image: need h, w >= 1, got h = {}, w = {}", h, w);
  if (axes_ == 3) grid({1, h, w}, markers, "add_image");
  else grid({h, w}, markers, "add_image");
  return *this;
}

PositionBuilder& PositionBuilder::add_video(std::int64_t t, std::int64_t h, std::int64_t w, bool markers) {
  TG_CHECK(t >= 1 && h >= 1 && w >= 1, "PositionBuilder::add_video: need t, h, w >= 1, got t = {}, h = {}, w = {}", t,
           h, w);
  TG_CHECK(axes_ == 3 || config_.scheme == PositionScheme::flat1d,
           "PositionBuilder::add_video: {} positions have 2 axes and no video rule; use 3 axes (tv3d, mrope, "
           "tie_v1_3d, ...) or add the frames as separate images",
           positions_name(config_));
  grid({t, h, w}, markers, "add_video");
  return *this;
}

void PositionBuilder::grid(const std::vector<std::int64_t>& dims, bool markers, const char* call) {
  const PositionScheme s = config_.scheme;
  if (s == PositionScheme::rope2d) {
    TG_CHECK(!markers, "PositionBuilder::{}: {} positions take no [IMG]/[/IMG] markers", call, positions_name(config_));
    TG_CHECK(!has_grid_, "PositionBuilder::{}: {} positions hold a single image; this builder has one already", call,
             positions_name(config_));
  }
  double cells = 1;  // in f64: the product of absurd dims must not wrap
  for (const std::int64_t d : dims) cells *= static_cast<double>(d);
  TG_CHECK(cells + 2 <= static_cast<double>(kMaxTokens - size()),
           "PositionBuilder::{}: {} patches do not fit (a sequence holds at most {} tokens; {} so far)", call, cells, kMaxTokens,
           size());
  has_grid_ = true;
  if (markers) text_like(TokenKind::image_begin);
  const double L = next_ - 1;  // the last text-like position before the grid
  const std::size_t A = dims.size();
  double N = 1, P = 1, dmax = 0;
  for (const std::int64_t d : dims) {
    N *= static_cast<double>(d);
    P *= static_cast<double>(d + 1);
    dmax = std::max(dmax, static_cast<double>(d));
  }
  std::int64_t count = 1;
  for (const std::int64_t d : dims) count *= d;
  // Dims as the builder's axes see them (an image in a 3-axis builder is one frame).
  std::vector<std::int64_t> k(A, 1);  // 1-based index per axis, raster order
  for (std::int64_t n = 0; n < count; ++n) {
    kinds_.push_back(TokenKind::patch);
    for (std::size_t a = 0; a < A && s != PositionScheme::flat1d; ++a) {
      const double ka = static_cast<double>(k[a]), da = static_cast<double>(dims[a]);
      double p = 0;
      switch (s) {
        case PositionScheme::rope2d: p = config_.start + ka - 1; break;
        case PositionScheme::tie_v1: p = L + ka * (P / (da + 1)); break;
        case PositionScheme::tie_v1_real: p = L + ka * ((N + 1) / (da + 1)); break;
        case PositionScheme::tv: p = L + (N - da) / 2 + ka; break;
        case PositionScheme::mrope: p = L + ka; break;
        case PositionScheme::flat1d: break;
      }
      pos_.push_back(p);
    }
    if (s == PositionScheme::flat1d) pos_.push_back(L + static_cast<double>(n + 1));
    for (std::size_t a = A; a-- > 0;) {  // advance the raster index, last axis fastest
      if (++k[a] <= dims[a]) break;
      k[a] = 1;
    }
  }
  switch (s) {
    case PositionScheme::flat1d:
    case PositionScheme::tie_v1_real:
    case PositionScheme::tv: next_ = L + N + 1; break;
    case PositionScheme::tie_v1: next_ = L + P; break;
    case PositionScheme::mrope: next_ = L + dmax + 1; break;
    case PositionScheme::rope2d: break;
  }
  if (markers) text_like(TokenKind::image_end);
}

double PositionBuilder::at(std::int64_t token, std::int64_t axis) const {
  TG_CHECK(token >= 0 && token < size() && axis >= 0 && axis < axes_,
           "PositionBuilder::at: token {} axis {} is outside [{}, {}]", token, axis, size(), axes_);
  return pos_[static_cast<std::size_t>(token * axes_ + axis)];
}

Tensor PositionBuilder::positions() const { return from_vector(pos_, {size(), axes_}); }

Tensor PositionBuilder::positions(std::int64_t first, std::int64_t count) const {
  TG_CHECK(first >= 0 && count >= 0 && first <= size() && count <= size() - first,  // (no first + count: it may wrap)
           "PositionBuilder::positions: {} rows from row {} are outside the {} tokens built", count, first, size());
  const auto b = pos_.begin() + first * axes_;
  return from_vector(std::vector<double>(b, b + count * axes_), {count, axes_});
}

Tensor PositionBuilder::is_patch() const {
  std::vector<bool> v(kinds_.size());
  for (std::size_t i = 0; i < kinds_.size(); ++i) v[i] = kinds_[i] == TokenKind::patch;
  return from_vector(v, {size()});
}

}  // namespace tg::nn
