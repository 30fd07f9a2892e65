// Rotary position embeddings (RoPE) as one fused op: rotates pairs of features by per-position
// angles given as cosine/sine tables (building the angles from positions and frequencies is left
// to the caller; compute them in f64 and cast, as the spec asks).
#pragma once

#include "core/tensor.hpp"

namespace tg::ops {

// Which features form a rotated pair (frequency index i = 0 .. d/2 - 1):
//   interleaved: (x[2i], x[2i+1])       (Su / RoFormer)
//   half_split:  (x[i], x[i + d/2])     (HF "rotate_half")
enum class RotaryLayout { interleaved, half_split };

// y = rotation of each pair of x [..., T, d] (d even) by the angle of (position t, frequency i):
//   (a, b) -> (a cos - b sin, a sin + b cos),  cos = cos[..., t, i], sin = sin[..., t, i].
// cos and sin have one shape, [T, d/2] (shared by every leading index of x), or [..., T, d/2] with
// leading dims that are x's or 1 (e.g. [B, 1, T, d/2] for per-sequence positions with heads in dim
// 1). T and d/2 are never broadcast: a table has a row for every position. Their dtype is
// converted to x's.
// Gradients flow to x only (the backward is the rotation by the negative angle). cos/sin are
// non-differentiable inputs: passing tables that require grad (with grad mode on) raises an error
// rather than silently dropping their gradient; detach them.
Tensor apply_rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, RotaryLayout layout);

}  // namespace tg::ops
