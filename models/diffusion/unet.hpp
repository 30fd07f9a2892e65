// An EDM-style UNet denoiser network F(x; c_noise, label) (Karras et al. 2022, NVlabs/edm SongUNet),
// built so that Skip-Tuning (Ma et al. 2024; spec techniques-B §1) has exactly one place to act.
//
//   encoder   level 0: stem conv 3x3, then `blocks_per_level` residual blocks; each output is a skip.
//             level l > 0: a down block (avg-pool 2x2 inside), then the residual blocks; every output
//             is a skip. So there are k + 1 = levels * (blocks_per_level + 1) skips.
//   middle    two residual blocks at the lowest resolution (the first with self-attention when the
//             lowest level is in attention_levels, as by default).
//   decoder   from the deepest level up: blocks_per_level + 1 residual blocks per level, each taking
//             concat(x, rho_i * skip_i) (the skips are consumed in reverse order of creation, so i = 0
//             is the deepest skip and i = k the one next to the output), then an up block (nearest 2x)
//             into the next level. The head is GroupNorm + SiLU + conv 3x3.
//
// A residual block (EDM UNetBlock, adaptive scale) on x [B, Cin, H, W] with the embedding e [B, E]:
//   h   = conv0( resample( silu( GroupNorm(x) ) ) )                 main branch, norm first
//   h   = silu( GroupNorm(h) * (1 + scale(e)) + shift(e) )          FiLM by the time/label embedding
//   out = ( conv1(dropout(h)) + shortcut(resample(x)) ) * sqrt(1/2)  shortcut: 1x1 conv when Cin != Cout
//   [+ out = (out + proj(attention(GroupNorm(out)))) * sqrt(1/2)]     at the attention levels
// The decoder blocks therefore see the concatenation both through a norm-first main branch and through
// a linear 1x1 shortcut: GroupNorm alone would normalise a skip-only group's rho away, the shortcut
// carries it linearly, so rho really changes the output (spec §1.1).
//
// Skip-Tuning: `skip_scales` (empty = off) holds rho_0..rho_k; every skip tensor passes through
// tuned_skip(), the only place it is scaled. It is a plain member, not a buffer: never trained, never
// saved, and training code never sets it.
#pragma once

#include <string>
#include <vector>

#include "core/random.hpp"
#include "nn/conv.hpp"
#include "nn/linear.hpp"
#include "nn/norm.hpp"

namespace tg::models::diffusion {

struct UNetConfig {
  std::int64_t image_size = 16;                 // H = W; divisible by 2^(levels - 1)
  std::int64_t in_channels = 1;                 // image channels (also the output channels)
  std::vector<std::int64_t> channels{32, 64, 64};  // per resolution level, top (full size) to bottom
  std::int64_t blocks_per_level = 1;            // residual blocks per level in the encoder (+1 in the decoder)
  std::vector<std::int64_t> attention_levels{2};  // levels whose residual blocks have self-attention
  std::int64_t head_channels = 64;              // channels per attention head (heads = C / head_channels, >= 1)
  std::int64_t noise_channels = 0;              // sinusoidal features of c_noise (0: channels[0])
  std::int64_t emb_dim = 0;                     // embedding width (0: 4 * channels[0])
  std::int64_t num_classes = 0;                 // > 0: class-conditional, label num_classes = "no label"
  double dropout = 0.0;                         // inside the residual blocks, in training mode
  std::int64_t max_groups = 32;                 // GroupNorm: min(max_groups, C / min_group_channels) groups
  std::int64_t min_group_channels = 4;
  bool zero_init = true;                        // zero-init the last conv of each branch and the head (EDM/ADM)
  DType dtype = DType::f32;
};

// The GroupNorm group count for C channels: the largest g <= min(max_groups, C / min_group_channels)
// that divides C (at least 1).
std::int64_t group_count(const UNetConfig& c, std::int64_t channels);

// Skip-Tuning scales for k + 1 = count skips: rho_i = rho_bottom + (rho_top - rho_bottom) i / k, with
// rho_0 = rho_bottom and rho_k = rho_top exactly (i = 0 is the deepest skip). count = 1 gives {rho_bottom}.
std::vector<double> skip_tuning_scales(std::int64_t count, double rho_bottom, double rho_top);

enum class Resample { none, down, up };

struct BlockOptions {
  Resample resample = Resample::none;
  bool attention = false;
  std::int64_t heads = 1;
};

// One residual block (see the file comment). x [B, Cin, H, W], emb [B, E] -> [B, Cout, H', W'] with
// H' = H / 2 (down), 2 H (up) or H.
class UNetBlock : public nn::Module {
 public:
  UNetBlock() = default;
  UNetBlock(std::int64_t in, std::int64_t out, std::int64_t emb_dim, const BlockOptions& options, const UNetConfig& config,
            Generator* gen);
  Tensor operator()(const Tensor& x, const Tensor& emb) const;
  void visit(nn::Visitor& v) override;
  std::string type_name() const override { return "UNetBlock"; }
  std::string extra_repr() const override;
  std::string structure() const override;  // resampling and attention heads

  nn::GroupNorm norm0, norm1, norm2;
  nn::Conv2d conv0, conv1, shortcut;  // shortcut: 1x1, only when in != out
  nn::Linear affine;                  // emb -> [scale, shift] (2 out)
  nn::Conv2d qkv, proj;               // attention (1x1 convs), only when options.attention
  nn::Dropout drop{0.0};
  BlockOptions options;
  std::int64_t in_channels = 0, out_channels = 0;
};

class UNet : public nn::Module {
 public:
  explicit UNet(const UNetConfig& config, Generator* gen = nullptr);

  // x [B, C, S, S] (already scaled by c_in), c_noise [B], labels [B] (i64 in [0, num_classes], the
  // last meaning "no label"; undefined for an unconditional model, or for "no label" everywhere)
  // -> F [B, C, S, S].
  Tensor operator()(const Tensor& x, const Tensor& c_noise, const Tensor& labels = {}) const;

  // The embedding of the noise level (and label): e [B, emb_dim].
  Tensor embed(const Tensor& c_noise, const Tensor& labels, std::int64_t batch) const;

  // Number of skip tensors (k + 1).
  std::int64_t num_skips() const { return static_cast<std::int64_t>(skip_channels_.size()); }
  // Skip-Tuning on / off (see skip_tuning_scales). Sampling-time only.
  void set_skip_tuning(double rho_bottom, double rho_top);
  void clear_skip_tuning() { skip_scales.clear(); }

  void visit(nn::Visitor& v) override;
  std::string type_name() const override { return "UNet"; }
  std::string extra_repr() const override;

  UNetConfig config;
  std::vector<double> skip_scales;  // rho_i by consumption order (0 = deepest skip); empty = off

  nn::Linear map_noise0, map_noise1;  // noise_channels -> emb_dim -> emb_dim
  nn::Embedding map_label;            // [num_classes + 1, noise_channels], conditional models only
  nn::Conv2d stem;                    // in_channels -> channels[0], 3x3
  std::vector<UNetBlock> enc;         // in creation order; each output is a skip
  std::vector<UNetBlock> mid;         // 2 blocks at the lowest resolution
  std::vector<UNetBlock> dec;         // in execution order (up blocks included)
  nn::GroupNorm out_norm;
  nn::Conv2d out_conv;                // channels[0] -> in_channels, 3x3

 private:
  // The one place a skip tensor is scaled: h * rho_i when Skip-Tuning is on.
  Tensor tuned_skip(const Tensor& h, std::size_t i) const;

  std::vector<std::int64_t> skip_channels_;  // channels of each skip, creation order
  std::vector<bool> dec_takes_skip_;         // per decoder block: concatenates a skip first
};

}  // namespace tg::models::diffusion
