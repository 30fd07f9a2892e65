// Fused attention: explicit softmax(Q K^T * scale + mask) V references over tables of shapes,
// layouts and masks; causal bottom-right alignment (KV cache); fully masked rows; gradchecks;
// dropout against the explicit composition; thread-count determinism; errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/autograd.hpp"
#include "core/random.hpp"
#include "ops/attention.hpp"
#include "ops/dropout.hpp"
#include "ops/elementwise.hpp"
#include "ops/linalg.hpp"
#include "ops/loss.hpp"
#include "ops/reduce.hpp"
#include "tests/support/gradcheck.hpp"
#include "tests/support/helpers.hpp"
#include "tests/support/reference.hpp"

using namespace tg;
using Catch::Matchers::Contains;

namespace {

// Explicit attention in f64: scores, mask (causal bottom-right and/or bool), softmax, weighted sum.
// Rows with no visible key give zeros.
Tensor ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, const Tensor& mask, double scale) {
  const int nd = q.dim();
  const std::int64_t Tq = q.shape()[nd - 2], Tk = k.shape()[nd - 2], d = q.shape()[nd - 1], dv = v.shape()[nd - 1];
  Shape lead(std::span<const std::int64_t>(q.shape().begin(), q.shape().end() - 2));
  Shape scores = lead;
  scores.push_back(Tq);
  scores.push_back(Tk);
  const std::int64_t BH = lead.numel();
  const auto qv = q.to_vector<double>(), kv = k.to_vector<double>(), vv = v.to_vector<double>();
  const auto mv = mask.defined() ? mask.to(DType::f64).to_vector<double>() : std::vector<double>();
  std::vector<double> out(static_cast<std::size_t>(BH * Tq * dv), 0.0);
  std::vector<double> s(static_cast<std::size_t>(Tk));
  std::vector<bool> vis(static_cast<std::size_t>(Tk));
  for (std::int64_t b = 0; b < BH; ++b)
    for (std::int64_t i = 0; i < Tq; ++i) {
      double m = -INFINITY;
      for (std::int64_t j = 0; j < Tk; ++j) {
        double acc = 0;
        for (std::int64_t p = 0; p < d; ++p) acc += qv[(b * Tq + i) * d + p] * kv[(b * Tk + j) * d + p];
        s[j] = acc * scale;
        bool ok = !causal || j <= i + Tk - Tq;
        if (ok && mask.defined())
          ok = mv[test::ref::ravel_broadcast(test::ref::unravel((b * Tq + i) * Tk + j, scores), mask.shape())] != 0;
        vis[j] = ok;
        if (ok) m = std::max(m, s[j]);
      }
      if (m == -INFINITY) continue;
      double sum = 0;
      for (std::int64_t j = 0; j < Tk; ++j) sum += vis[j] ? std::exp(s[j] - m) : 0.0;
      for (std::int64_t j = 0; j < Tk; ++j) {
        if (!vis[j]) continue;
        const double pj = std::exp(s[j] - m) / sum;
        for (std::int64_t e = 0; e < dv; ++e) out[(b * Tq + i) * dv + e] += pj * vv[(b * Tk + j) * dv + e];
      }
    }
  Shape os = lead;
  os.push_back(Tq);
  os.push_back(dv);
  return from_vector(out, os);
}

Shape with(Shape lead, std::int64_t a, std::int64_t b) {
  lead.push_back(a);
  lead.push_back(b);
  return lead;
}

// A random bool mask of `shape` (about 70% true), with row `empty_row` of the last two dims all false.
Tensor random_mask(const Shape& shape, std::uint64_t seed, std::int64_t empty_row = -1) {
  const auto u = test::uniform(shape, 0, 1, DType::f64, seed).to_vector<double>();
  const std::int64_t Tk = shape.back(), Tq = shape[shape.size() - 2];
  std::vector<bool> m(u.size());
  for (std::size_t i = 0; i < u.size(); ++i) {
    const std::int64_t row = static_cast<std::int64_t>(i) / Tk % Tq;
    m[i] = u[i] > 0.3 && row != empty_row;
  }
  return from_vector(m, shape);
}

ops::AttentionOptions options(bool causal, const Tensor& mask = {}, std::optional<double> scale = {}) {
  ops::AttentionOptions o;
  o.causal = causal;
  o.mask = mask;
  o.scale = scale;
  return o;
}

struct Case {
  Shape lead;
  std::int64_t Tq, Tk, d, dv;
};

}  // namespace

TEST_CASE("attention: forward matches the explicit softmax(QK^T*scale + mask)V", "[ops][attention]") {
  const Case cases[] = {{{2, 3}, 7, 7, 8, 8},   {{1}, 1, 1, 1, 1},     {{2}, 17, 17, 65, 33}, {{1, 2}, 129, 129, 64, 64},
                        {{3}, 5, 17, 8, 4},     {{2}, 17, 5, 16, 16},  {{}, 7, 9, 3, 5},      {{2}, 129, 70, 8, 8},
                        {{1}, 70, 200, 1, 3}};
  std::uint64_t seed = 100;
  for (const Case& c : cases) {
    const Tensor q = test::randn(with(c.lead, c.Tq, c.d), DType::f64, ++seed);
    const Tensor k = test::randn(with(c.lead, c.Tk, c.d), DType::f64, ++seed);
    const Tensor v = test::randn(with(c.lead, c.Tk, c.dv), DType::f64, ++seed);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    for (bool causal : {false, true}) {
      INFO("lead " << fmt::format("{}", c.lead) << " Tq " << c.Tq << " Tk " << c.Tk << " d " << c.d << " dv " << c.dv
                   << " causal " << causal);
      const Tensor want = ref_attention(q, k, v, causal, {}, scale);
      CHECK_ALLCLOSE(ops::scaled_dot_product_attention(q, k, v, options(causal)), want, 1e-10, 1e-12);
      CHECK_ALLCLOSE(ops::scaled_dot_product_attention(test::transposed_layout(q), test::transposed_layout(k),
                                                       test::strided_layout(v), options(causal)),
                     want, 1e-10, 1e-12);
      CHECK_ALLCLOSE(ops::scaled_dot_product_attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32),
                                                       options(causal)),
                     want, 1e-4, 2e-5);
      // A bool mask broadcast over the leading dims (with one fully masked row), and a custom scale.
      const Tensor mask = random_mask({c.Tq, c.Tk}, seed, c.Tq > 2 ? 2 : -1);
      CHECK_ALLCLOSE(ops::scaled_dot_product_attention(q, k, v, options(causal, mask, 0.3)),
                     ref_attention(q, k, v, causal, mask, 0.3), 1e-10, 1e-12);
      if (c.lead.size() >= 1) {  // a per-batch mask [B, 1.., Tq, Tk]
        Shape ms = Shape::filled(c.lead.size(), 1);
        ms[0] = c.lead[0];
        const Tensor bm = random_mask(with(ms, c.Tq, c.Tk), seed + 7);
        CHECK_ALLCLOSE(ops::scaled_dot_product_attention(q.to(DType::f32), k.to(DType::f32), v.to(DType::f32),
                                                         options(causal, bm)),
                       ref_attention(q, k, v, causal, bm, scale), 1e-4, 2e-5);
      }
    }
  }
}

TEST_CASE("attention: permuted [B, T, H, d] views are read in place", "[ops][attention]") {
  const Tensor qb = test::randn({2, 33, 3, 16}, DType::f64, 1), kb = test::randn({2, 40, 3, 16}, DType::f64, 2);
  const Tensor vb = test::randn({2, 40, 3, 8}, DType::f64, 3);
  const Tensor q = qb.permute({0, 2, 1, 3}), k = kb.permute({0, 2, 1, 3}), v = vb.permute({0, 2, 1, 3});
  CHECK_FALSE(q.is_contiguous());
  CHECK_ALLCLOSE(ops::scaled_dot_product_attention(q, k, v, options(true)), ref_attention(q, k, v, true, {}, 0.25),
                 1e-10, 1e-12);
  CHECK_GRADCHECK([](const Tensors& t) {
    return ops::scaled_dot_product_attention(t[0].permute({0, 2, 1, 3}), t[1].permute({0, 2, 1, 3}),
                                             t[2].permute({0, 2, 1, 3}), options(true));
  }, {test::randn({1, 5, 2, 3}, DType::f64, 4), test::randn({1, 6, 2, 3}, DType::f64, 5), test::randn({1, 6, 2, 2}, DType::f64, 6)});
}

TEST_CASE("attention: causal masking is bottom-right aligned (KV cache)", "[ops][attention]") {
  // q holds the last Tq positions of a sequence whose Tk keys are all in k/v: its outputs are the
  // last Tq rows of full causal attention.
  const Tensor qf = test::randn({2, 70, 8}, DType::f64, 11), k = test::randn({2, 70, 8}, DType::f64, 12);
  const Tensor v = test::randn({2, 70, 5}, DType::f64, 13);
  const Tensor full = ops::scaled_dot_product_attention(qf, k, v, options(true));
  for (std::int64_t Tq : {1, 3, 17, 69}) {
    const Tensor tail = ops::scaled_dot_product_attention(qf.slice(1, 70 - Tq, 70), k, v, options(true));
    CHECK_ALLCLOSE(tail, full.slice(1, 70 - Tq, 70), 1e-12, 1e-13);
  }
  // One new query attends to every cached key: causal == non-causal.
  const Tensor one = qf.slice(1, 69, 70);
  CHECK_ALLCLOSE(ops::scaled_dot_product_attention(one, k, v, options(true)),
                 ops::scaled_dot_product_attention(one, k, v, options(false)), 1e-14, 1e-14);
  // The explicit lower-right triangle for Tq = 2, Tk = 4: query 0 sees keys 0..2, query 1 sees 0..3.
  const Tensor q2 = test::randn({2, 3}, DType::f64, 14), k4 = test::randn({4, 3}, DType::f64, 15);
  const Tensor v4 = test::randn({4, 2}, DType::f64, 16);
  const Tensor tri = from_vector(std::vector<bool>{true, true, true, false, true, true, true, true}, {2, 4});
  CHECK_ALLCLOSE(ops::scaled_dot_product_attention(q2, k4, v4, options(true)),
                 ops::scaled_dot_product_attention(q2, k4, v4, options(false, tri)), 1e-14, 1e-14);
}

TEST_CASE("attention: fully masked rows give zeros, not NaN (forward and backward)", "[ops][attention]") {
  // Tq > Tk with causal: the first Tq - Tk queries see nothing. Plus a bool mask with an empty row.
  for (DType dt : {DType::f64, DType::f32}) {
    Tensor q = test::randn({2, 9, 4}, dt, 21).requires_grad_(), k = test::randn({2, 5, 4}, dt, 22).requires_grad_();
    Tensor v = test::randn({2, 5, 3}, dt, 23).requires_grad_();
    const Tensor mask = random_mask({9, 5}, 24, 6);
    const Tensor out = ops::scaled_dot_product_attention(q, k, v, options(true, mask));
    const auto o = out.to_vector<double>();
    for (std::int64_t b = 0; b < 2; ++b)
      for (std::int64_t i : {0, 1, 2, 3, 6})
        for (std::int64_t e = 0; e < 3; ++e) CHECK(o[(b * 9 + i) * 3 + e] == 0.0);
    ops::sum(ops::square(out)).backward();
    for (const Tensor& g : {q.grad(), k.grad(), v.grad()})
      for (double x : g.to_vector<double>()) CHECK(std::isfinite(x));
    const auto gq = q.grad().to_vector<double>();
    for (std::int64_t b = 0; b < 2; ++b)
      for (std::int64_t i : {0, 1, 2, 3, 6})
        for (std::int64_t p = 0; p < 4; ++p) CHECK(gq[(b * 9 + i) * 4 + p] == 0.0);
  }
  // No key at all.
  Tensor q = test::randn({3, 4}, DType::f64, 25).requires_grad_();
  Tensor out = ops::scaled_dot_product_attention(q, zeros({0, 4}, DType::f64), zeros({0, 2}, DType::f64));
  CHECK(out.shape() == Shape{3, 2});
  CHECK(out.to_vector<double>() == std::vector<double>(6, 0.0));
  ops::sum(out).backward();
  CHECK(q.grad().to_vector<double>() == std::vector<double>(12, 0.0));
}

TEST_CASE("attention: a NaN or infinite score gives NaN, as the unfused softmax (not a masked row's zeros)", "[ops][attention]") {
  for (DType dt : {DType::f64, DType::f32}) {
    Tensor q = test::randn({5, 4}, dt, 31), k = test::randn({6, 4}, dt, 32);
    const Tensor v = test::randn({6, 3}, dt, 33);
    q.narrow(0, 1, 1).narrow(1, 2, 1).fill_(NAN);       // query row 1
    k.narrow(0, 4, 1).narrow(1, 0, 1).fill_(NAN);       // key 4: every score against it is NaN
    const auto o = ops::scaled_dot_product_attention(q, k, v, options(true, Tensor())).to_vector<double>();
    // Causal (Tq = 5, Tk = 6: row i sees keys 0..i + 1): rows 0-2 do not see key 4; row 1 holds the NaN.
    for (std::int64_t i = 0; i < 5; ++i)
      for (std::int64_t e = 0; e < 3; ++e) {
        INFO("row " << i << " column " << e);
        CHECK(std::isnan(o[static_cast<std::size_t>(i * 3 + e)]) == (i == 1 || i >= 3));
      }
  }
}

TEST_CASE("attention: a query that sees one key has exactly zero q gradient (softmax of one score)", "[ops][attention]") {
  // Causal self-attention: query 0 sees key 0 only, so its output is v_0 whatever q_0 and k_0
  // are. The backward's D_0 = <dO_0, O_0> is formed in the same FMA order as dP_00 = <dO_0, v_0>,
  // so dS = P (dP - D) is exactly 0, as in the math (and in PyTorch's explicit softmax).
  for (DType dt : {DType::f32, DType::f64})
    for (std::int64_t T : {5, 40, 70}) {  // one and several key/query blocks
      INFO(T);
      Tensor q = test::randn({2, 3, T, 64}, dt, 40).requires_grad_(), k = test::randn({2, 3, T, 64}, dt, 41);
      const Tensor v = test::randn({2, 3, T, 80}, dt, 42);
      ops::sum(ops::mul(ops::scaled_dot_product_attention(q, k, v, options(true, {})),
                        test::randn({2, 3, T, 80}, dt, 43)))
          .backward();
      const Tensor g0 = q.grad().narrow(2, 0, 1);  // [2, 3, 1, 64]
      CHECK(ops::sum(ops::abs(g0)).item() == 0.0);
      CHECK(ops::sum(ops::abs(q.grad())).item() > 0.0);
    }
}

TEST_CASE("attention: gradcheck for q, k and v", "[ops][attention][grad][scaled_dot_product_attention]") {
  const Case cases[] = {{{2}, 3, 4, 5, 3}, {{1, 2}, 7, 7, 8, 8}, {{2}, 5, 3, 2, 2}, {{}, 1, 1, 1, 1}, {{1}, 70, 70, 3, 2}};
  std::uint64_t seed = 300;
  for (const Case& c : cases) {
    const Tensor q = test::transposed_layout(test::randn(with(c.lead, c.Tq, c.d), DType::f64, ++seed));
    const Tensor k = test::randn(with(c.lead, c.Tk, c.d), DType::f64, ++seed);
    const Tensor v = test::strided_layout(test::randn(with(c.lead, c.Tk, c.dv), DType::f64, ++seed));
    const Tensor mask = random_mask({c.Tq, c.Tk}, ++seed, c.Tq > 2 ? 1 : -1);
    INFO("lead " << fmt::format("{}", c.lead) << " Tq " << c.Tq << " Tk " << c.Tk << " d " << c.d);
    for (bool causal : {false, true}) {
      CHECK_GRADCHECK([&](const Tensors& t) { return ops::scaled_dot_product_attention(t[0], t[1], t[2], options(causal)); },
                      {q, k, v});
      if (c.Tq * c.Tk < 1000) {
        CHECK_GRADCHECK([&](const Tensors& t) {
          return ops::scaled_dot_product_attention(t[0], t[1], t[2], options(causal, mask, 0.8));
        }, {q, k, v});
      }
    }
  }
  // Only some inputs (autograd::grad asks for v only).
  Tensor q = test::randn({4, 3}, DType::f64, 9), k = test::randn({5, 3}, DType::f64, 10);
  Tensor v = test::randn({5, 2}, DType::f64, 11).requires_grad_();
  const Tensor gv = autograd::grad({ops::sum(ops::scaled_dot_product_attention(q, k, v))}, {v})[0];
  CHECK(gv.shape() == Shape{5, 2});
}

TEST_CASE("attention: dropout equals softmax -> ops::dropout -> matmul with the same stream", "[ops][attention][dropout]") {
  for (bool causal : {false, true}) {
    const Tensor q0 = test::randn({2, 2, 9, 4}, DType::f64, 31), k0 = test::randn({2, 2, 11, 4}, DType::f64, 32);
    const Tensor v0 = test::randn({2, 2, 11, 3}, DType::f64, 33), g = test::randn({2, 2, 9, 3}, DType::f64, 34);
    Generator g1(77), g2(77);
    Tensor q1 = q0.detach().requires_grad_(), k1 = k0.detach().requires_grad_(), v1 = v0.detach().requires_grad_();
    ops::AttentionOptions o = options(causal);
    o.dropout_p = 0.3;
    o.generator = &g1;
    const Tensor fused = ops::scaled_dot_product_attention(q1, k1, v1, o);
    fused.backward(g);
    Tensor q2 = q0.detach().requires_grad_(), k2 = k0.detach().requires_grad_(), v2 = v0.detach().requires_grad_();
    Tensor s = ops::matmul(q2, k2.transpose(-1, -2)) * 0.5;
    if (causal) {
      std::vector<bool> tri(9 * 11);
      for (int i = 0; i < 9; ++i)
        for (int j = 0; j < 11; ++j) tri[i * 11 + j] = j <= i + 2;
      s = ops::where(from_vector(tri, {9, 11}), s, -INFINITY);
    }
    const Tensor p = ops::dropout(ops::softmax(s, -1), 0.3, true, g2);
    const Tensor expl = ops::matmul(p, v2);
    expl.backward(g);
    CHECK(g1.state().offset == g2.state().offset);
    CHECK_ALLCLOSE(fused, expl, 1e-12, 1e-13);
    CHECK_ALLCLOSE(q1.grad(), q2.grad(), 1e-10, 1e-12);
    CHECK_ALLCLOSE(k1.grad(), k2.grad(), 1e-10, 1e-12);
    CHECK_ALLCLOSE(v1.grad(), v2.grad(), 1e-10, 1e-12);
  }
  // Gradcheck with a fixed stream (the generator restarts on every evaluation).
  CHECK_GRADCHECK([](const Tensors& t) {
    Generator gen(5);
    ops::AttentionOptions o;
    o.dropout_p = 0.5;
    o.generator = &gen;
    return ops::scaled_dot_product_attention(t[0], t[1], t[2], o);
  }, {test::randn({2, 5, 3}, DType::f64, 35), test::randn({2, 6, 3}, DType::f64, 36), test::randn({2, 6, 2}, DType::f64, 37)});
}

TEST_CASE("attention: 1 vs N threads give identical bits", "[ops][attention][threads]") {
  struct TC {
    Shape lead;
    std::int64_t Tq, Tk, d, dv;
    bool causal;
    double p;
  };
  // Several query and key blocks; few batch*heads (partial dQ per key range) and many (one task per head).
  const TC cases[] = {{{2, 2}, 129, 129, 65, 33, true, 0.0}, {{1}, 200, 150, 64, 64, false, 0.1}, {{8, 4}, 100, 100, 64, 64, true, 0.0}};
  for (const TC& c : cases) {
    const Tensor q0 = test::randn(with(c.lead, c.Tq, c.d), DType::f32, 41), k0 = test::randn(with(c.lead, c.Tk, c.d), DType::f32, 42);
    const Tensor v0 = test::randn(with(c.lead, c.Tk, c.dv), DType::f32, 43), g = test::randn(with(c.lead, c.Tq, c.dv), DType::f32, 44);
    const Tensor mask = random_mask({c.Tq, c.Tk}, 45);
    CHECK(test::same_bits_across_threads([&] {
      Tensor q = q0.detach().requires_grad_(), k = k0.detach().requires_grad_(), v = v0.detach().requires_grad_();
      Generator gen(3);
      ops::AttentionOptions o = options(c.causal, c.lead.size() == 2 ? mask : Tensor());
      o.dropout_p = c.p;
      o.generator = &gen;
      Tensor out = ops::scaled_dot_product_attention(q, k, v, o);
      out.backward(g);
      return Tensors{out, q.grad(), k.grad(), v.grad()};
    }));
  }
}

TEST_CASE("attention: a mask written into after the forward is an error in the backward", "[ops][attention][errors]") {
  const Tensor q = randn({2, 3, 4}).requires_grad_(), k = randn({2, 5, 4}), v = randn({2, 5, 6});
  Tensor mask = ones({3, 5}, DType::boolean);
  const Tensor y = ops::sum(ops::scaled_dot_product_attention(q, k, v, options(false, mask)));
  mask.fill_(0);
  CHECK_THROWS_WITH(y.backward(), Contains("was modified in place after it was saved") &&
                                      Contains("scaled_dot_product_attention"));
}

TEST_CASE("attention: errors name the op, the shapes and the dim", "[ops][attention][errors]") {
  const Tensor q = zeros({2, 3, 4}), k = zeros({2, 5, 4}), v = zeros({2, 5, 6});
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, zeros({2, 5, 3}), v),
                    Contains("scaled_dot_product_attention: q and k must have the same feature size d (dim -1): q shape [2, 3, 4] has 4, k shape [2, 5, 3] has 3"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, k, zeros({2, 4, 6})),
                    Contains("k and v must have the same number of keys (dim -2): k shape [2, 5, 4] has 5, v shape [2, 4, 6] has 4"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, zeros({3, 5, 4}), zeros({3, 5, 6})),
                    Contains("the leading dims of q [2, 3, 4], k [3, 5, 4] and v [3, 5, 6] differ (dim 0: 2, 3, 3)"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, zeros({1, 2, 5, 4}), v), Contains("q, k and v must have the same number of dims"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(zeros({4}), k, v), Contains("q must have at least 2 dims"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, k, v, options(false, zeros({3, 5}))),
                    Contains("mask must be a bool tensor (true = attend), got f32"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, k, v, options(false, ones({3, 4}, DType::boolean))),
                    Contains("mask shape [3, 4] is not broadcastable to the scores' shape [2, 3, 5] ([..., Tq, Tk]; dim -1: 4 vs 5)"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, k, v, options(false, ones({3, 2, 3, 5}, DType::boolean))),
                    Contains("mask shape [3, 2, 3, 5] is not broadcastable"));
  ops::AttentionOptions o;
  o.dropout_p = 1.0;
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, k, v, o), Contains("dropout_p must be in [0, 1), got 1"));
  CHECK_THROWS_WITH(ops::scaled_dot_product_attention(q, k, arange(60).reshape({2, 5, 6})),
                    Contains("v must be a floating-point tensor"));
}
