// Fused attention: frontend, shape checks and backward rule (kernels in ops/kernels/attention.cpp).
#include "ops/attention.hpp"

#include <cmath>
#include <vector>

#include "core/autograd.hpp"
#include "ops/common.hpp"
#include "ops/kernels/attention.hpp"

namespace tg::ops {

using autograd::input_needs_grad;
using autograd::record;
using autograd::SavedTensor;
using detail::check_defined;

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

// Element offset of each flattened leading index of t (every dim but the last two), row-major.
std::vector<std::int64_t> batch_offsets(const Tensor& t) {
  const int nl = t.dim() - 2;
  std::int64_t BH = 1;
  for (int d = 0; d < nl; ++d) BH *= t.shape()[d];
  std::vector<std::int64_t> off(static_cast<std::size_t>(BH));
  for (std::int64_t b = 0; b < BH; ++b) {
    std::int64_t rem = b, o = 0;
    for (int d = nl - 1; d >= 0; --d) {
      o += (rem % t.shape()[d]) * t.strides()[d];
      rem /= t.shape()[d];
    }
    off[static_cast<std::size_t>(b)] = o;
  }
  return off;
}

template <class T>
kernels::AttnOperand<T> operand(const Tensor& t, const std::vector<std::int64_t>& off) {
  return {t.data<T>(), off.data(), t.strides()[t.dim() - 2], t.strides()[t.dim() - 1]};
}

// The parts of the kernel configuration that outlive the forward call (no pointers).
struct Dims {
  std::int64_t BH, Tq, Tk, d, dv;
};

kernels::AttentionConfig make_config(const Dims& s, double scale, bool causal, double p, std::uint64_t seed,
                                     std::uint64_t first) {
  kernels::AttentionConfig cfg;
  cfg.BH = s.BH;
  cfg.Tq = s.Tq;
  cfg.Tk = s.Tk;
  cfg.d = s.d;
  cfg.dv = s.dv;
  cfg.scale = scale;
  cfg.causal = causal;
  cfg.dropout_p = p;
  cfg.dropout_seed = seed;
  cfg.dropout_first = first;
  return cfg;
}

void set_mask(kernels::AttentionConfig& cfg, const Tensor& mask, const std::vector<std::int64_t>& off) {
  if (!mask.defined()) return;
  cfg.mask = {mask.data<bool>(), off.data(), mask.strides()[mask.dim() - 2], mask.strides()[mask.dim() - 1]};
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                    const AttentionOptions& opt) {
  check_defined(q_in, kOp, "q");
  check_defined(k_in, kOp, "k");
  check_defined(v_in, kOp, "v");
  for (const auto& [t, name] : {std::pair{&q_in, "q"}, std::pair{&k_in, "k"}, std::pair{&v_in, "v"}}) {
    TG_CHECK(t->is_floating_point(), "{}: {} must be a floating-point tensor (f32 or f64), got {} (shape {})", kOp,
             name, t->dtype(), t->shape());
    TG_CHECK(t->dim() >= 2, "{}: {} must have at least 2 dims ([..., T, d]), got shape {}", kOp, name, t->shape());
  }
  TG_CHECK(q_in.dim() == k_in.dim() && q_in.dim() == v_in.dim(),
           "{}: q, k and v must have the same number of dims, got shapes {}, {} and {}", kOp, q_in.shape(),
           k_in.shape(), v_in.shape());
  const int nd = q_in.dim();
  for (int d = 0; d < nd - 2; ++d) {
    TG_CHECK(q_in.shape()[d] == k_in.shape()[d] && q_in.shape()[d] == v_in.shape()[d],
             "{}: the leading dims of q {}, k {} and v {} differ (dim {}: {}, {}, {})", kOp, q_in.shape(), k_in.shape(),
             v_in.shape(), d, q_in.shape()[d], k_in.shape()[d], v_in.shape()[d]);
  }
  const std::int64_t Tq = q_in.shape()[nd - 2], Tk = k_in.shape()[nd - 2];
  const std::int64_t d = q_in.shape()[nd - 1], dv = v_in.shape()[nd - 1];
  TG_CHECK(k_in.shape()[nd - 1] == d,
           "{}: q and k must have the same feature size d (dim -1): q shape {} has {}, k shape {} has {}", kOp,
           q_in.shape(), d, k_in.shape(), k_in.shape()[nd - 1]);
  TG_CHECK(v_in.shape()[nd - 2] == Tk,
           "{}: k and v must have the same number of keys (dim -2): k shape {} has {}, v shape {} has {}", kOp,
           k_in.shape(), Tk, v_in.shape(), v_in.shape()[nd - 2]);
  TG_CHECK(opt.dropout_p >= 0 && opt.dropout_p < 1, "{}: dropout_p must be in [0, 1), got {}", kOp, opt.dropout_p);
  const double scale = opt.scale.value_or(d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0);
  TG_CHECK(std::isfinite(scale), "{}: scale must be finite, got {}", kOp, scale);

  Shape lead(std::span<const std::int64_t>(q_in.shape().begin(), q_in.shape().end() - 2));
  Shape score_shape = lead;
  score_shape.push_back(Tq);
  score_shape.push_back(Tk);
  Tensor mask;
  if (opt.mask.defined()) {
    const Tensor& m = opt.mask;
    TG_CHECK(m.dtype() == DType::boolean, "{}: mask must be a bool tensor (true = attend), got {} (shape {})", kOp,
             m.dtype(), m.shape());
    TG_CHECK(m.dim() <= score_shape.size(), "{}: mask shape {} is not broadcastable to the scores' shape {}", kOp,
             m.shape(), score_shape);
    for (int i = 1; i <= m.dim(); ++i) {
      const std::int64_t md = m.shape()[m.dim() - i], sd = score_shape[score_shape.size() - i];
      TG_CHECK(md == sd || md == 1,
               "{}: mask shape {} is not broadcastable to the scores' shape {} ([..., Tq, Tk]; dim -{}: {} vs {})", kOp,
               m.shape(), score_shape, i, md, sd);
    }
    mask = m.detach().expand(score_shape);
  }

  const DType dt = promote(promote(q_in.dtype(), k_in.dtype()), v_in.dtype());
  const Tensor q = q_in.to(dt), k = k_in.to(dt), v = v_in.to(dt);
  const Dims dims{lead.numel(), Tq, Tk, d, dv};
  std::uint64_t seed = 0, first = 0;
  if (opt.dropout_p > 0) {
    Generator& gen = opt.generator ? *opt.generator : default_generator();
    seed = gen.seed();
    first = gen.advance(static_cast<std::uint64_t>(dims.BH * Tq * Tk));
  }

  Shape out_shape = lead;
  out_shape.push_back(Tq);
  out_shape.push_back(dv);
  Tensor out = empty(out_shape, dt);
  Tensor lse = empty({dims.BH, Tq}, dt);
  {
    const auto oq = batch_offsets(q), ok = batch_offsets(k), ov = batch_offsets(v);
    const auto om = mask.defined() ? batch_offsets(mask) : std::vector<std::int64_t>();
    kernels::AttentionConfig cfg = make_config(dims, scale, opt.causal, opt.dropout_p, seed, first);
    set_mask(cfg, mask, om);
    dispatch_float(dt, kOp, [&]<class T>() {
      kernels::attention_forward<T>(cfg, operand<T>(q, oq), operand<T>(k, ok), operand<T>(v, ov), out.data<T>(),
                                    lse.data<T>());
    });
  }

  return record(kOp, {q, k, v}, out,
                [sq = SavedTensor(q), sk = SavedTensor(k), sv = SavedTensor(v), so = SavedTensor(out), lse,
                 smask = SavedTensor(mask), dims,
                 scale, causal = opt.causal, p = opt.dropout_p, seed, first](const Tensor& g) {
                  const Tensor qv = sq.get(), kv = sk.get(), vv = sv.get(), ov = so.get(), mask = smask.get();
                  const Tensor gc = g.contiguous();
                  Tensor gq, gk, gv;
                  if (input_needs_grad(0)) gq = empty(qv.shape(), qv.dtype());
                  if (input_needs_grad(1)) gk = empty(kv.shape(), kv.dtype());
                  if (input_needs_grad(2)) gv = empty(vv.shape(), vv.dtype());
                  const auto oq = batch_offsets(qv), ok = batch_offsets(kv), ovv = batch_offsets(vv);
                  const auto om = mask.defined() ? batch_offsets(mask) : std::vector<std::int64_t>();
                  kernels::AttentionConfig cfg = make_config(dims, scale, causal, p, seed, first);
                  set_mask(cfg, mask, om);
                  dispatch_float(qv.dtype(), kOp, [&]<class T>() {
                    kernels::attention_backward<T>(cfg, operand<T>(qv, oq), operand<T>(kv, ok), operand<T>(vv, ovv),
                                                   ov.data<T>(), lse.data<T>(), gc.data<T>(),
                                                   gq.defined() ? gq.data<T>() : nullptr,
                                                   gk.defined() ? gk.data<T>() : nullptr,
                                                   gv.defined() ? gv.data<T>() : nullptr);
                  });
                  return Tensors{gq, gk, gv};
                });
}

}  // namespace tg::ops
