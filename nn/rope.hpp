// Rotary position embeddings for N-D positions (RoPE-1D/2D/3D), and the position builder of the
// multimodal schemes of spec techniques-A §1: flat RoPE-1D, plain RoPE-2D, RoPE-Tie v1 (Su, kexue.fm
// 10040), RoPE-TV (RoPE-Tie v2, kexue.fm 10352) and Qwen2-VL's M-RoPE.
//
//   nn::PositionBuilder pb(nn::parse_positions("tv"));
//   pb.add_text(3).add_image(2, 3).add_text(2);          // text, a 2x3 patch image, text
//   const Tensor pos = pb.positions();                    // [11, 2] f64: (0,0) (1,1) (2,2) (5,4.5) ...
//   nn::Rope rope(head_dim, pb.axes(), {.base = 1e4});
//   const nn::RotaryTables t = rope.tables(pos);          // cos/sin [11, head_dim / 2] for attention
//
// A token with position vector p (A axes) is rotated in frequency pair i by the angle
// p[axis_map[i]] * theta_i, theta_i = base^(-2i/d). Each pair keeps its RoPE-1D frequency whatever
// its axis, so a text token at (n, n, ..., n) is rotated exactly as RoPE-1D at n (compatibility).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nn/attention.hpp"

namespace tg::nn {

// ---- rotary tables --------------------------------------------------------------------------------------------

struct RopeOptions {
  double base = 10000.0;
  ops::RotaryLayout layout = ops::RotaryLayout::interleaved;  // pair (2i, 2i+1) or (i, i + d/2)
  // The frequency -> axis map. Empty: interleaved over the axes, a(i) = i mod A (Su's RoPE-2D:
  // x.theta_0, y.theta_1, x.theta_2, ...; RoPE-1D when A = 1). Otherwise contiguous sections as in
  // Qwen2-VL M-RoPE: the first sections[0] frequencies belong to axis 0, the next sections[1] to
  // axis 1, ...; they must sum to head_dim / 2.
  std::vector<std::int64_t> sections;
};

// Builds cos/sin tables from positions. Not a Module: it has no parameters.
class Rope {
 public:
  Rope() = default;
  Rope(std::int64_t head_dim, std::int64_t axes, const RopeOptions& options = {});

  // positions [T, A] -> cos/sin [T, d/2];  [B, T, A] (one layout per sequence) -> [B, 1, T, d/2]
  // (broadcast over heads). Any numeric dtype; angles are computed in f64 (position converted to
  // f64, times theta_i in f64), cos/sin in f64, then cast to `dtype`.
  RotaryTables tables(const Tensor& positions, DType dtype = DType::f32) const;
  // x [..., T, d] rotated at positions [T, A] (or [B, T, A] for x [B, H, T, d]).
  Tensor operator()(const Tensor& x, const Tensor& positions) const;

  std::int64_t head_dim = 0, axes = 1;
  std::vector<std::int64_t> axis_map;  // [d/2]: the position axis of frequency pair i
  std::vector<double> theta;           // [d/2]: base^(-2i/d)
  ops::RotaryLayout layout = ops::RotaryLayout::interleaved;
};

// The axis maps: a(i) = i mod axes, and contiguous sections.
std::vector<std::int64_t> interleaved_axis_map(std::int64_t pairs, std::int64_t axes);
std::vector<std::int64_t> sectioned_axis_map(const std::vector<std::int64_t>& sections);

// ---- position assignment --------------------------------------------------------------------------------------

// How positions are assigned to text and to image/video patches (spec §1.3). With L the position of
// the last text-like token before a grid of patches (dims d_a on axis a, N = prod d_a patches,
// 1-based index k_a along axis a), patch k gets on axis a:
//   flat1d       L + (raster index, 1-based)                       next text L + N + 1  (1 axis)
//   rope2d       start + k_a - 1; a single grid, no text                                  (image only)
//   tie_v1       L + k_a s_a, s_a = P / (d_a + 1), P = prod(d_a + 1)  next text L + P
//                (2-D: s = w + 1 on rows, t = h + 1 on cols; the 3-D rule is our generalisation:
//                an image there is one frame, d_t = 1, so its spacings and P are twice the 2-D ones)
//   tie_v1_real  L + k_a (N + 1) / (d_a + 1)                        next text L + N + 1
//   tv           L + (N - d_a) / 2 + k_a  (RoPE-TV, half-integers) next text L + N + 1
//   mrope        L + k_a  (Qwen2-VL: top-left at L + 1)             next text L + max_a d_a + 1
// Text-like tokens (text and [IMG]/[/IMG] markers) get (n, n, ..., n), n = the next text position.
// L is always next_text() - 1. A grid right after another grid without markers, or at the very start,
// therefore takes as L a position no token holds: the previous grid's last "virtual token" (the grid
// counted as N tokens; P - 1 in tie_v1; max_a d_a in mrope), or start - 1. The symmetry rules then hold around that
// empty position; the spec (§1.9) recommends [IMG]/[/IMG] markers so that a real token sits there.
enum class PositionScheme { flat1d, rope2d, tie_v1, tie_v1_real, tv, mrope };

struct PositionConfig {
  PositionScheme scheme = PositionScheme::flat1d;
  // Position axes: 0 = the scheme's default (flat1d 1; mrope 3 = (t, h, w); the others 2 = (h, w)).
  // 3 axes order them (t, h, w), and an image is a video of one frame; flat1d takes only 1 axis.
  std::int64_t axes = 0;
  double start = 0;  // position of the first text token (1 reproduces Su's 1-based examples); |start| <= 2^40
};

// "flat1d", "rope2d", "tie_v1", "tie_v1_real", "tv", "mrope" (3 axes), and the 2-axis/3-axis
// variants "mrope2d", "tv3d", "tie_v1_3d", "tie_v1_real_3d", "rope3d".
PositionConfig parse_positions(const std::string& name);
std::string positions_name(const PositionConfig& config);

enum class TokenKind : std::uint8_t { text, image_begin, image_end, patch };

// Assigns positions token by token. The builder tracks the next text position, so a KV-cached
// decoder continues a prompt with add_text(1) per generated token.
class PositionBuilder {
 public:
  // Tokens one builder holds at most (far beyond what attention over them could process here).
  static constexpr std::int64_t kMaxTokens = std::int64_t{1} << 24;

  explicit PositionBuilder(const PositionConfig& config = {});
  explicit PositionBuilder(PositionScheme scheme) : PositionBuilder(PositionConfig{.scheme = scheme}) {}

  // k text tokens at n, n + 1, ... on every axis.
  PositionBuilder& add_text(std::int64_t k = 1);
  // An image of h rows x w cols of patches, in raster order, optionally wrapped in [IMG] ... [/IMG]
  // markers (positioned like text; the spec recommends them, so that the symmetry rules hold for
  // back-to-back images).
  PositionBuilder& add_image(std::int64_t h, std::int64_t w, bool markers = false);
  // A video of t frames of h x w patches (frame, then row, then column order); needs 3 axes
  // (flat1d flattens it).
  PositionBuilder& add_video(std::int64_t t, std::int64_t h, std::int64_t w, bool markers = false);

  const PositionConfig& config() const { return config_; }
  std::int64_t axes() const { return axes_; }
  std::int64_t size() const { return static_cast<std::int64_t>(kinds_.size()); }
  double next_text() const { return next_; }  // position of the next text-like token
  const std::vector<TokenKind>& kinds() const { return kinds_; }
  const std::vector<double>& data() const { return pos_; }  // row-major [size, axes]
  double at(std::int64_t token, std::int64_t axis) const;

  Tensor positions() const;                                   // [size, axes] f64
  Tensor positions(std::int64_t first, std::int64_t count) const;  // rows first .. first + count - 1
  Tensor is_patch() const;                                    // [size] bool

 private:
  void grid(const std::vector<std::int64_t>& dims, bool markers, const char* call);
  void text_like(TokenKind kind);
  PositionConfig config_;
  std::int64_t axes_ = 1;
  double next_ = 0;
  bool has_grid_ = false;
  std::vector<TokenKind> kinds_;
  std::vector<double> pos_;
};

}  // namespace tg::nn
