// Fused parameter updates: the tensors of a step are cut into fixed chunks of elements, and one
// parallel_for runs over all chunks of all tensors (no per-parameter launch, deterministic).
#include "ops/fused.hpp"

// GCC 12 reports false -Wuninitialized warnings from inside avx512fintrin.h (the _mm512_undefined_*
// operand of xsimd's sqrt) in some builds (-O1 sanitizer builds); not about this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <xsimd/xsimd.hpp>

#include <cmath>

#include "core/autograd.hpp"
#include "core/parallel.hpp"

namespace tg::ops {
namespace {

constexpr std::int64_t kChunk = 1 << 14;

struct Segment {
  std::size_t tensor;
  std::int64_t begin, end;
};

std::vector<Segment> segments(const Tensors& ts) {
  std::vector<Segment> out;
  for (std::size_t i = 0; i < ts.size(); ++i)
    for (std::int64_t b = 0; b < ts[i].numel(); b += kChunk) out.push_back({i, b, std::min(ts[i].numel(), b + kChunk)});
  return out;
}

// The updates are not recorded on the tape: like Tensor::fill_, they refuse to write into a tensor
// that requires grad while grad mode is on.
void check_unrecorded_write(const char* op, const Tensor& t, std::size_t i) {
  TG_CHECK(!(grad_enabled() && t.requires_grad()),
           "{}: tensor {} (shape {}) requires grad and grad mode is on; in-place updates are not recorded, so call it under "
           "NoGradGuard (as the optimizers do)",
           op, i, t.shape());
}

void check_group(const char* op, const Tensors& a, const Tensors& b) {
  TG_CHECK(a.size() == b.size(), "{}: {} tensors but {} companions", op, a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    TG_CHECK(a[i].defined() && b[i].defined(), "{}: tensor {} is undefined", op, i);
    TG_CHECK(a[i].shape() == b[i].shape() && a[i].dtype() == b[i].dtype(),
             "{}: tensor {} is {} {} but its companion is {} {}", op, i, a[i].shape(), a[i].dtype(), b[i].shape(),
             b[i].dtype());
    TG_CHECK(a[i].is_contiguous() && b[i].is_contiguous(), "{}: tensor {} must be contiguous", op, i);
    TG_CHECK(a[i].is_floating_point(), "{}: tensor {} must be floating-point, got {}", op, i, a[i].dtype());
    check_unrecorded_write(op, a[i], i);
  }
}

// Runs body<T>(segment) over every segment, dispatching on each tensor's dtype.
template <class Body>
void for_segments(const Tensors& ts, Body&& body) {
  const std::vector<Segment> segs = segments(ts);
  parallel_for(static_cast<std::int64_t>(segs.size()), 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t s = b; s < e; ++s) {
      const Segment& seg = segs[static_cast<std::size_t>(s)];
      dispatch_float(ts[seg.tensor].dtype(), "fused update", [&]<class T>() { body.template operator()<T>(seg); });
    }
  });
}

void bump(const Tensors& ts) {
  for (const Tensor& t : ts) t.storage()->bump_version();
}

}  // namespace

void adam_step(const Tensors& params, const Tensors& grads, const Tensors& m, const Tensors& v, const AdamHyper& h) {
  check_group("adam_step", params, grads);
  check_group("adam_step", params, m);
  check_group("adam_step", params, v);
  TG_CHECK(h.step >= 1, "adam_step: step counts updates from 1 (it sets the bias correction), got {}", h.step);
  const double bc1 = 1 - std::pow(h.beta1, static_cast<double>(h.step));
  const double bc2 = 1 - std::pow(h.beta2, static_cast<double>(h.step));
  const double step_size = h.lr / bc1, inv_sqrt_bc2 = 1 / std::sqrt(bc2);
  const double decay = h.decoupled ? 1 - h.lr * h.weight_decay : 1.0;
  const double l2 = h.decoupled ? 0.0 : h.weight_decay;
  for_segments(params, [&]<class T>(const Segment& s) {
    using B = xsimd::batch<T>;
    constexpr std::int64_t W = B::size;
    T* p = params[s.tensor].data<T>();
    const T* g = grads[s.tensor].data<T>();
    T* mp = m[s.tensor].data<T>();
    T* vp = v[s.tensor].data<T>();
    auto update = [&](auto pv, auto gv, auto mv, auto vv, auto& p_out, auto& m_out, auto& v_out) {
      using V = decltype(pv);
      gv = gv + V(static_cast<T>(l2)) * pv;
      pv = pv * V(static_cast<T>(decay));
      mv = V(static_cast<T>(h.beta1)) * mv + V(static_cast<T>(1 - h.beta1)) * gv;
      vv = V(static_cast<T>(h.beta2)) * vv + V(static_cast<T>(1 - h.beta2)) * gv * gv;
      const V denom = xsimd::sqrt(vv) * V(static_cast<T>(inv_sqrt_bc2)) + V(static_cast<T>(h.eps));
      p_out = pv - V(static_cast<T>(step_size)) * mv / denom;
      m_out = mv;
      v_out = vv;
    };
    std::int64_t i = s.begin;
    for (; i + W <= s.end; i += W) {
      B po, mo, vo;
      update(B::load_unaligned(p + i), B::load_unaligned(g + i), B::load_unaligned(mp + i), B::load_unaligned(vp + i),
             po, mo, vo);
      po.store_unaligned(p + i);
      mo.store_unaligned(mp + i);
      vo.store_unaligned(vp + i);
    }
    if (i < s.end) {  // padded tail: the same SIMD arithmetic as the body
      alignas(64) T bp[W] = {}, bg[W] = {}, bm[W] = {}, bv[W] = {};
      const std::int64_t n = s.end - i;
      for (std::int64_t j = 0; j < n; ++j) {
        bp[j] = p[i + j];
        bg[j] = g[i + j];
        bm[j] = mp[i + j];
        bv[j] = vp[i + j];
      }
      B po, mo, vo;
      update(B::load_aligned(bp), B::load_aligned(bg), B::load_aligned(bm), B::load_aligned(bv), po, mo, vo);
      po.store_aligned(bp);
      mo.store_aligned(bm);
      vo.store_aligned(bv);
      for (std::int64_t j = 0; j < n; ++j) {
        p[i + j] = bp[j];
        mp[i + j] = bm[j];
        vp[i + j] = bv[j];
      }
    }
  });
  bump(params);
  bump(m);
  bump(v);
}

void sgd_step(const Tensors& params, const Tensors& grads, const Tensors& buf, const SGDHyper& h) {
  check_group("sgd_step", params, grads);
  if (h.momentum != 0) check_group("sgd_step", params, buf);
  for_segments(params, [&]<class T>(const Segment& s) {
    T* p = params[s.tensor].data<T>();
    const T* g = grads[s.tensor].data<T>();
    T* b = h.momentum != 0 ? buf[s.tensor].data<T>() : nullptr;
    const T lr = static_cast<T>(h.lr), wd = static_cast<T>(h.weight_decay), mom = static_cast<T>(h.momentum),
            damp = static_cast<T>(1 - h.dampening);
    for (std::int64_t i = s.begin; i < s.end; ++i) {  // plain loop: GCC vectorises it
      T d = g[i] + wd * p[i];
      if (b) {
        b[i] = h.first_step ? d : mom * b[i] + damp * d;
        d = h.nesterov ? d + mom * b[i] : b[i];
      }
      p[i] -= lr * d;
    }
  });
  bump(params);
  if (h.momentum != 0) bump(buf);
}

void ema_update(const Tensors& shadow, const Tensors& params, double decay) {
  check_group("ema_update", shadow, params);
  for_segments(shadow, [&]<class T>(const Segment& s) {
    T* e = shadow[s.tensor].data<T>();
    const T* p = params[s.tensor].data<T>();
    const T d = static_cast<T>(decay), one_minus = static_cast<T>(1 - decay);
    for (std::int64_t i = s.begin; i < s.end; ++i) e[i] = d * e[i] + one_minus * p[i];
  });
  bump(shadow);
}

double sum_of_squares(const Tensors& tensors) {
  // Per-segment partial sums in f64, added in segment order.
  for (const Tensor& t : tensors) TG_CHECK(t.defined() && t.is_contiguous() && t.is_floating_point(), "sum_of_squares: tensors must be contiguous floating-point");
  const std::vector<Segment> segs = segments(tensors);
  std::vector<double> partial(segs.size(), 0.0);
  parallel_for(static_cast<std::int64_t>(segs.size()), 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t s = b; s < e; ++s) {
      const Segment& seg = segs[static_cast<std::size_t>(s)];
      dispatch_float(tensors[seg.tensor].dtype(), "sum_of_squares", [&]<class T>() {
        const T* x = tensors[seg.tensor].data<T>();
        double acc[8] = {};
        std::int64_t i = seg.begin;
        for (; i + 8 <= seg.end; i += 8)
          for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(x[i + l]) * static_cast<double>(x[i + l]);
        for (; i < seg.end; ++i) acc[0] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
        partial[static_cast<std::size_t>(s)] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      });
    }
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

void scale_(const Tensors& tensors, double s) {
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    TG_CHECK(t.defined() && t.is_contiguous() && t.is_floating_point(), "scale_: tensors must be contiguous floating-point");
    check_unrecorded_write("scale_", t, i);
  }
  for_segments(tensors, [&]<class T>(const Segment& seg) {
    T* x = tensors[seg.tensor].data<T>();
    const T f = static_cast<T>(s);
    for (std::int64_t i = seg.begin; i < seg.end; ++i) x[i] *= f;
  });
  bump(tensors);
}

}  // namespace tg::ops
