// Fused scaled-dot-product attention: one tape node with its own backward.
//
//   out = softmax(scale * q k^T + mask) v
//
// computed flash-attention style (tiled, online softmax): neither the forward nor the backward
// ever holds more than one block of scores; the op saves only its output and one logsumexp per
// query row, and the backward recomputes the scores block by block. Deterministic: bit-identical
// for any thread count.
#pragma once

#include <optional>

#include "core/random.hpp"
#include "core/tensor.hpp"

namespace tg::ops {

struct AttentionOptions {
  // Causal masking, aligned to the BOTTOM-RIGHT corner of the [Tq, Tk] score matrix: query i sits at
  // absolute position Tk - Tq + i and attends to keys j <= Tk - Tq + i. With Tq == Tk this is the
  // usual lower triangle; with Tq < Tk (a KV cache holding Tk - Tq earlier positions, q the last Tq
  // positions) each new query sees the whole cache and the new keys up to itself, which is what
  // incremental decoding needs. NOTE: this differs from PyTorch's is_causal, which aligns the
  // triangle to the top-left corner (query i sees keys j <= i whatever Tk); the two agree when
  // Tq == Tk. With Tq > Tk the first Tq - Tk queries see no key at all (zero output).
  bool causal = false;
  // Optional bool mask, broadcastable to [..., Tq, Tk] (the leading dims of q); true = attend.
  // Combined with `causal` by AND.
  Tensor mask;
  // Score scale; default 1 / sqrt(d) (1 when d == 0).
  std::optional<double> scale;
  // Dropout on the attention probabilities (after the softmax), in [0, 1). The mask is drawn from
  // `generator` (default_generator() when null): probability (b, i, j) of the flattened
  // [batch*heads, Tq, Tk] matrix uses Philox counter offset + (b * Tq + i) * Tk + j, and the draw
  // advances the generator by batch*heads*Tq*Tk, as ops::dropout on the explicit probability matrix
  // would. The backward regenerates the mask from the same counters (it is never stored).
  double dropout_p = 0.0;
  Generator* generator = nullptr;
};

// q [..., Tq, d], k [..., Tk, d], v [..., Tk, dv] with identical leading (batch, head...) dims, any
// layout (e.g. a permuted [B, T, H, d] -> [B, H, T, d] view is read in place, without a copy).
// f32 or f64 (mixed inputs are promoted). Returns [..., Tq, dv], contiguous.
// A query row with no visible key (fully masked) gives a zero output row and zero gradients (never
// NaN). Gradients flow to q, k and v.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const AttentionOptions& options = {});

}  // namespace tg::ops
