// Kernels for attention, rotary embeddings and dropout masks (internal to ops/; no xsimd here).
//
// Fused attention (flash-attention style, see attention.cpp for the blocking):
//   forward   O = softmax(scale * Q K^T + mask) V, row by row with an online softmax over key
//             blocks; only O and the per-row logsumexp are kept.
//   backward  recomputes the scores block by block from Q, K and the logsumexp.
// Operands are [BH, rows, cols] views with arbitrary strides: element (b, i, j) of an operand is
// data[off[b] + i * rs + j * cs] (the leading dims flattened into BH by the caller, which passes
// one offset per flattened batch entry). Results are bit-identical for any thread count.
#pragma once

#include <cstdint>

namespace tg::kernels {

template <class T>
struct AttnOperand {
  const T* data = nullptr;
  const std::int64_t* off = nullptr;  // [BH] element offsets from data
  std::int64_t rs = 0, cs = 0;        // row / column strides in elements (0 = broadcast)
  T at(std::int64_t b, std::int64_t i, std::int64_t j) const { return data[off[b] + i * rs + j * cs]; }
};

struct AttentionConfig {
  std::int64_t BH = 0, Tq = 0, Tk = 0, d = 0, dv = 0;
  double scale = 1.0;
  // Bottom-right aligned causal mask: query i sits at absolute position i + Tk - Tq and sees keys
  // j <= i + Tk - Tq (with Tq == Tk this is the usual lower triangle).
  bool causal = false;
  AttnOperand<bool> mask;  // data == nullptr: no mask; true = attend
  // Dropout on the attention probabilities: element (b, i, j) is kept iff the uniform of Philox
  // counter dropout_first + (b * Tq + i) * Tk + j is >= dropout_p; kept values scale by 1 / (1 - p).
  double dropout_p = 0.0;
  std::uint64_t dropout_seed = 0, dropout_first = 0;
};

// out: [BH, Tq, dv] contiguous; lse: [BH, Tq] (logsumexp of each scaled, masked score row; +inf for
// a row with no visible key, whose output is zero).
template <class T>
void attention_forward(const AttentionConfig& cfg, AttnOperand<T> q, AttnOperand<T> k, AttnOperand<T> v, T* out,
                       T* lse);

// dout, out: [BH, Tq, dv] contiguous. dq [BH, Tq, d], dk [BH, Tk, d], dvv [BH, Tk, dv]: contiguous
// outputs, each written when non-null.
template <class T>
void attention_backward(const AttentionConfig& cfg, AttnOperand<T> q, AttnOperand<T> k, AttnOperand<T> v,
                        const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dvv);

// ---- rotary embeddings ------------------------------------------------------------------------------
// Rotates the pairs of each contiguous row of d values of x (rows of y likewise):
//   interleaved: (x[2i], x[2i+1]);  half-split: (x[i], x[i + d/2])
// by the angle whose cosine/sine are cos/sin[row_of(r) * (d/2) + i], where row_of(r) = r % period
// (period = number of cos rows; cos/sin contiguous). inverse: rotate by the negative angle.
template <class T>
void rotary(const T* x, T* y, std::int64_t rows, std::int64_t d, const T* cos, const T* sin, std::int64_t period,
            bool interleaved, bool inverse);

// ---- dropout masks ------------------------------------------------------------------------------------
// The keep threshold for drop probability p: element with counter c is kept iff
// u53(philox(seed, c)) >= p, i.e. iff its 53 uniform bits >= ceil(p * 2^53). (u53 is the uniform
// tg::rand draws for the same counter, so the mask equals rand(...) >= p for the same state.)
std::uint64_t dropout_threshold(double p);
// keep[i] = 1 if counter first + i is kept, else 0, for i in [0, n). Vectorised Philox.
void dropout_keep(std::uint64_t seed, std::uint64_t first, std::int64_t n, std::uint64_t threshold,
                  std::uint8_t* keep);

}  // namespace tg::kernels
