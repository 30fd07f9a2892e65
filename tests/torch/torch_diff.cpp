// Driver of the differential checker against PyTorch (tests/torch/torch_diff.py).
//
//   build/tests/torch_diff CASES_FILE RESULTS_FILE [--threads N]
//
// Reads a batch of cases, runs each op on tapegrad in the dtype of its inputs (f64, or f32 for
// the f32 mode), backpropagates the given cotangents and writes the outputs and the gradient of
// every input that requires grad. No comparison happens here.
//
// Case file (text lines, each tensor followed by its raw little-endian data):
//   CASE <id> <op> <dtype>             dtype: the case's float dtype, f64 or f32 (the inputs have it)
//   N <name> <v0> <v1> ...             numeric parameter (printed with full precision)
//   S <name> <value>                   string parameter (one token)
//   T <name> <dtype> <grad> <ndim> <d0> ... <dn-1>\n<numel * element size bytes>
//                                      a leaf tensor (dtype f64 | f32 | i64 | i32 | bool; grad 0/1)
//   V <view> <args...>                 a view applied to the previous tensor's current value:
//                                      transpose a b | permute d0 .. dn-1 | slice axis start stop step |
//                                      flip axis | expand d0 .. dn-1 | unsqueeze axis | select axis index
//   END
// The op sees the viewed tensors; the gradients reported are those of the leaves (the base tensors).
// Tensors "cot" (the cotangent of a single output) and "cot.<i>" (of output i of a multi-output op;
// outputs without one are left out of the backward) are reserved; tensors starting with "_" are
// not inputs to differentiate (they are passed to the op but never get a gradient).
//
// Results file:
//   RESULT <id> OK              followed by tensors "T <name> <dtype> <ndim> <dims...>\n<f64 data>"
//                               (dtype: the tensor's own, its values converted to f64), then END
//   RESULT <id> ERR <message>   then END
// Reported tensors: "out" (or "out.<i>" for each output of a multi-output op), and "grad.<name>"
// for every leaf with grad 1 (an undefined gradient is reported as zeros, flagged by the line
// "Z <name>" before END).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/autograd.hpp"
#include "core/parallel.hpp"
#include "core/tensor.hpp"
#include "ops/attention.hpp"
#include "ops/conv.hpp"
#include "ops/elementwise.hpp"
#include "ops/fft.hpp"
#include "ops/linalg.hpp"
#include "ops/monarch.hpp"
#include "ops/loss.hpp"
#include "ops/norm.hpp"
#include "ops/reduce.hpp"
#include "ops/rotary.hpp"
#include "ops/shape.hpp"

using namespace tg;

namespace {

struct Leaf {
  Tensor base;   // the leaf (requires grad when `grad`)
  Tensor value;  // base after the views
  bool grad = false;
};

struct Case {
  std::string id, op, dtype;
  std::map<std::string, std::vector<double>> num;
  std::map<std::string, std::string> str;
  std::map<std::string, Leaf> tensors;
  std::vector<std::string> order;

  bool has(const std::string& k) const { return num.count(k) || str.count(k) || tensors.count(k); }
  const std::vector<double>& nums(const std::string& k) const {
    auto it = num.find(k);
    if (it == num.end()) throw std::runtime_error("driver: missing numeric parameter '" + k + "'");
    return it->second;
  }
  double f(const std::string& k) const { return nums(k).at(0); }
  double f(const std::string& k, double dflt) const { return num.count(k) ? f(k) : dflt; }
  std::int64_t i(const std::string& k) const { return static_cast<std::int64_t>(f(k)); }
  std::int64_t i(const std::string& k, std::int64_t dflt) const { return num.count(k) ? i(k) : dflt; }
  bool b(const std::string& k, bool dflt = false) const { return num.count(k) ? f(k) != 0 : dflt; }
  ops::Size2 s2(const std::string& k, ops::Size2 dflt) const {
    if (!num.count(k)) return dflt;
    const auto& v = nums(k);
    if (v.size() != 2) throw std::runtime_error("driver: parameter '" + k + "' needs 2 values");
    return {static_cast<std::int64_t>(v[0]), static_cast<std::int64_t>(v[1])};
  }
  Shape shape(const std::string& k) const {
    Shape s;
    for (double v : nums(k)) s.push_back(static_cast<std::int64_t>(v));
    return s;
  }
  std::string s(const std::string& k, const std::string& dflt = "") const {
    auto it = str.find(k);
    return it == str.end() ? dflt : it->second;
  }
  Tensor t(const std::string& k) const {
    auto it = tensors.find(k);
    if (it == tensors.end()) throw std::runtime_error("driver: missing tensor '" + k + "'");
    return it->second.value;
  }
  Tensor opt_t(const std::string& k) const { return tensors.count(k) ? t(k) : Tensor(); }
};

DType parse_dtype(const std::string& s) {
  if (s == "f64") return DType::f64;
  if (s == "f32") return DType::f32;
  if (s == "i64") return DType::i64;
  if (s == "i32") return DType::i32;
  if (s == "bool") return DType::boolean;
  throw std::runtime_error("driver: unknown dtype " + s);
}

Tensor apply_view(const Tensor& t, const std::string& kind, const std::vector<std::int64_t>& a) {
  if (kind == "transpose") return t.transpose(a.at(0), a.at(1));
  if (kind == "permute") return t.permute(Shape(a));
  if (kind == "slice") return t.slice(a.at(0), a.at(1), a.at(2), a.at(3));
  if (kind == "flip") return t.flip(Shape{a.at(0)});
  if (kind == "expand") return t.expand(Shape(a));
  if (kind == "unsqueeze") return t.unsqueeze(a.at(0));
  if (kind == "select") return t.select(a.at(0), a.at(1));
  throw std::runtime_error("driver: unknown view " + kind);
}

// Reads one case; false at the end of the file.
bool read_case(std::istream& in, Case& c) {
  std::string line;
  while (std::getline(in, line) && line.empty()) {
  }
  if (!in) return false;
  {
    std::istringstream ls(line);
    std::string tag;
    ls >> tag >> c.id >> c.op >> c.dtype;
    if (tag != "CASE") throw std::runtime_error("driver: expected CASE, got: " + line);
  }
  std::string last;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string tag;
    ls >> tag;
    if (tag == "END") return true;
    if (tag == "N") {
      std::string name;
      ls >> name;
      std::vector<double> v;
      std::string tok;
      while (ls >> tok) v.push_back(std::strtod(tok.c_str(), nullptr));  // handles inf / nan too
      c.num[name] = v;
    } else if (tag == "S") {
      std::string name, value;
      ls >> name >> value;
      c.str[name] = value;
    } else if (tag == "T") {
      std::string name, dt;
      int grad = 0, nd = 0;
      ls >> name >> dt >> grad >> nd;
      Shape shape;
      for (int d = 0; d < nd; ++d) {
        std::int64_t v;
        ls >> v;
        shape.push_back(v);
      }
      const DType dtype = parse_dtype(dt);
      std::vector<char> bytes(static_cast<std::size_t>(shape.numel()) * dtype_size(dtype));
      in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!in) throw std::runtime_error("driver: truncated data for tensor " + name);
      Tensor t = detail::from_buffer(bytes.data(), dtype, shape);
      if (grad) t.requires_grad_();
      c.tensors[name] = Leaf{t, t, grad != 0};
      c.order.push_back(name);
      last = name;
    } else if (tag == "V") {
      std::string kind;
      ls >> kind;
      std::vector<std::int64_t> a;
      std::int64_t v;
      while (ls >> v) a.push_back(v);
      Leaf& l = c.tensors.at(last);
      l.value = apply_view(l.value, kind, a);
    } else {
      throw std::runtime_error("driver: unexpected line: " + line);
    }
  }
  throw std::runtime_error("driver: unterminated case " + c.id);
}

ops::Reduction reduction(const Case& c) {
  const std::string r = c.s("reduction", "mean");
  if (r == "mean") return ops::Reduction::mean;
  if (r == "sum") return ops::Reduction::sum;
  if (r == "none") return ops::Reduction::none;
  throw std::runtime_error("driver: unknown reduction " + r);
}

Shape axes(const Case& c) { return c.num.count("axes") ? c.shape("axes") : Shape{}; }

Tensor unary(const Case& c, const std::string& op, const Tensor& x) {
  if (op == "neg") return ops::neg(x);
  if (op == "exp") return ops::exp(x);
  if (op == "log") return ops::log(x);
  if (op == "log1p") return ops::log1p(x);
  if (op == "expm1") return ops::expm1(x);
  if (op == "sqrt") return ops::sqrt(x);
  if (op == "rsqrt") return ops::rsqrt(x);
  if (op == "square") return ops::square(x);
  if (op == "reciprocal") return ops::reciprocal(x);
  if (op == "abs") return ops::abs(x);
  if (op == "sign") return ops::sign(x);
  if (op == "sin") return ops::sin(x);
  if (op == "cos") return ops::cos(x);
  if (op == "tanh") return ops::tanh(x);
  if (op == "erf") return ops::erf(x);
  if (op == "round") return ops::round(x);
  if (op == "floor") return ops::floor(x);
  if (op == "ceil") return ops::ceil(x);
  if (op == "sigmoid") return ops::sigmoid(x);
  if (op == "relu") return ops::relu(x);
  if (op == "leaky_relu") return c.has("slope") ? ops::leaky_relu(x, c.f("slope")) : ops::leaky_relu(x);
  if (op == "gelu") return ops::gelu(x, ops::GeluApprox::none);
  if (op == "gelu_tanh") return ops::gelu(x, ops::GeluApprox::tanh);
  if (op == "silu") return ops::silu(x);
  if (op == "softplus") return ops::softplus(x, c.f("beta", 1.0), c.f("threshold", 20.0));
  if (op == "pow_scalar") return ops::pow(x, c.f("exponent"));
  if (op == "tan") return ops::tan(x);
  if (op == "asin") return ops::asin(x);
  if (op == "acos") return ops::acos(x);
  if (op == "atan") return ops::atan(x);
  if (op == "sinh") return ops::sinh(x);
  if (op == "cosh") return ops::cosh(x);
  if (op == "log2") return ops::log2(x);
  if (op == "log10") return ops::log10(x);
  if (op == "logsigmoid") return ops::logsigmoid(x);
  if (op == "elu") return ops::elu(x, c.f("alpha", 1.0));
  if (op == "selu") return ops::selu(x);
  if (op == "mish") return ops::mish(x);
  if (op == "hardtanh") return ops::hardtanh(x, c.f("min_val", -1.0), c.f("max_val", 1.0));
  if (op == "relu6") return ops::relu6(x);
  if (op == "hardsigmoid") return ops::hardsigmoid(x);
  if (op == "hardswish") return ops::hardswish(x);
  if (op == "clamp") {
    std::optional<double> lo, hi;
    if (c.has("low")) lo = c.f("low");
    if (c.has("high")) hi = c.f("high");
    return ops::clamp(x, lo, hi);
  }
  if (op == "add_scalar") return ops::add(x, c.f("scalar"));
  if (op == "sub_scalar") return ops::sub(x, c.f("scalar"));
  if (op == "rsub_scalar") return ops::sub(c.f("scalar"), x);
  if (op == "mul_scalar") return ops::mul(x, c.f("scalar"));
  if (op == "div_scalar") return ops::div(x, c.f("scalar"));
  if (op == "rdiv_scalar") return ops::div(c.f("scalar"), x);
  // reductions
  const bool keep = c.b("keepdim");
  if (op == "sum") return ops::sum(x, axes(c), keep);
  if (op == "mean") return ops::mean(x, axes(c), keep);
  if (op == "prod") return ops::prod(x, axes(c), keep);
  if (op == "amax") return ops::amax(x, axes(c), keep);
  if (op == "amin") return ops::amin(x, axes(c), keep);
  if (op == "logsumexp") return ops::logsumexp(x, axes(c), keep);
  if (op == "var") return ops::var(x, axes(c), c.f("correction", 1.0), keep);
  if (op == "std") return ops::stddev(x, axes(c), c.f("correction", 1.0), keep);
  if (op == "norm") return ops::norm(x, c.f("p", 2.0), axes(c), keep);
  if (op == "cumsum") return ops::cumsum(x, c.i("axis"));
  if (op == "max_axis") return ops::max(x, c.i("axis"), keep).values;
  if (op == "sort") return ops::sort(x, c.i("axis"), c.b("descending")).values;
  if (op == "topk") return ops::topk(x, c.i("k"), c.i("axis"), c.b("descending")).values;
  if (op == "min_axis") return ops::min(x, c.i("axis"), keep).values;
  throw std::runtime_error("driver: unknown op " + op);
}

bool is_unary(const std::string& op) {
  static const char* names[] = {"neg", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "square", "reciprocal", "abs",
                                "sign", "sin", "cos", "tanh", "erf", "round", "floor", "ceil", "sigmoid", "relu",
                                "leaky_relu", "gelu", "gelu_tanh", "silu", "softplus", "pow_scalar", "clamp",
                                "tan", "asin", "acos", "atan", "sinh", "cosh", "log2", "log10", "logsigmoid", "elu",
                                "selu", "mish", "hardtanh", "relu6", "hardsigmoid", "hardswish",
                                "add_scalar", "sub_scalar", "rsub_scalar", "mul_scalar", "div_scalar", "rdiv_scalar",
                                "sum", "mean", "prod", "amax", "amin", "logsumexp", "var", "std", "norm", "cumsum",
                                "max_axis", "min_axis", "sort", "topk"};
  for (const char* n : names)
    if (op == n) return true;
  return false;
}

// The op "view_chain": x through a chain of view and copy steps, "kind:a,b,...;kind:...", e.g.
// "permute:1,0,2;slice:0,1,5,2;reshape:-1". The steps are Tensor's own methods (core/views.cpp).
Tensor view_chain(const Tensor& x, const std::string& chain) {
  Tensor t = x;
  std::istringstream steps(chain);
  std::string step;
  while (std::getline(steps, step, ';')) {
    const auto colon = step.find(':');
    const std::string kind = step.substr(0, colon);
    const std::string args = colon == std::string::npos ? "" : step.substr(colon + 1);
    if (kind == "to") {
      t = t.to(parse_dtype(args));
      continue;
    }
    std::vector<std::int64_t> a;
    std::istringstream as(args);
    for (std::string tok; std::getline(as, tok, ',');) a.push_back(std::stoll(tok));
    if (kind == "view") t = t.view(Shape(a));
    else if (kind == "reshape") t = t.reshape(Shape(a));
    else if (kind == "flatten") t = t.flatten(a.at(0), a.at(1));
    else if (kind == "permute") t = t.permute(Shape(a));
    else if (kind == "transpose") t = t.transpose(a.at(0), a.at(1));
    else if (kind == "t") t = t.t();
    else if (kind == "expand") t = t.expand(Shape(a));
    else if (kind == "slice") t = t.slice(a.at(0), a.at(1), a.at(2), a.at(3));
    else if (kind == "narrow") t = t.narrow(a.at(0), a.at(1), a.at(2));
    else if (kind == "select") t = t.select(a.at(0), a.at(1));
    else if (kind == "squeeze") t = a.empty() ? t.squeeze() : t.squeeze(a.at(0));
    else if (kind == "unsqueeze") t = t.unsqueeze(a.at(0));
    else if (kind == "flip") t = t.flip(Shape(a));
    else if (kind == "diagonal") t = t.diagonal();
    else if (kind == "clone") t = t.clone();
    else if (kind == "contiguous") t = t.contiguous();
    else throw std::runtime_error("driver: unknown view_chain step " + step);
  }
  return t;
}

// The inputs x0, x1, ... of a list op (cat, stack), in order.
Tensors numbered_inputs(const Case& c) {
  Tensors xs;
  for (int i = 0;; ++i) {
    const auto it = c.tensors.find(std::string("x").append(std::to_string(i)));
    if (it == c.tensors.end()) return xs;
    xs.push_back(it->second.value);
  }
}

std::vector<std::int64_t> ints(const Case& c, const std::string& k) {
  std::vector<std::int64_t> v;
  for (double d : c.nums(k)) v.push_back(static_cast<std::int64_t>(d));
  return v;
}

// Shape and index ops (ops/shape.hpp) and the view chain (they may have several outputs); nullopt
// for the other ops.
std::optional<Tensors> shape_op(const Case& c) {
  const std::string& op = c.op;
  if (op == "view_chain") return Tensors{view_chain(c.t("x"), c.s("chain"))};
  if (op == "cat") return Tensors{ops::cat(numbered_inputs(c), c.i("axis"))};
  if (op == "stack") return Tensors{ops::stack(numbered_inputs(c), c.i("axis"))};
  if (op == "split") {
    if (c.has("sizes")) return ops::split(c.t("x"), ints(c, "sizes"), c.i("axis"));
    return ops::split(c.t("x"), c.i("size"), c.i("axis"));
  }
  if (op == "chunk") return ops::chunk(c.t("x"), c.i("chunks"), c.i("axis"));
  if (op == "unbind") return ops::unbind(c.t("x"), c.i("axis"));
  if (op == "index_select") return Tensors{ops::index_select(c.t("x"), c.i("axis"), c.t("_index"))};
  if (op == "gather") return Tensors{ops::gather(c.t("x"), c.i("axis"), c.t("_index"))};
  if (op == "scatter_add") return Tensors{ops::scatter_add(c.t("x"), c.i("axis"), c.t("_index"), c.t("src"))};
  if (op == "embedding") return Tensors{ops::embedding(c.t("w"), c.t("_index"))};
  if (op == "one_hot") return Tensors{ops::one_hot(c.t("_index"), c.i("num_classes"), parse_dtype(c.dtype))};
  if (op == "masked_fill") return Tensors{ops::masked_fill(c.t("x"), c.t("_mask"), c.f("value"))};
  if (op == "tril") return Tensors{ops::tril(c.t("x"), c.i("k"))};
  if (op == "triu") return Tensors{ops::triu(c.t("x"), c.i("k"))};
  if (op == "pad") {
    const std::string m = c.s("mode");
    const auto mode = m == "reflect"     ? ops::PadMode::reflect
                      : m == "replicate" ? ops::PadMode::replicate
                      : m == "circular"  ? ops::PadMode::circular
                                         : ops::PadMode::constant;
    return Tensors{ops::pad(c.t("x"), ints(c, "pads"), mode, c.f("value", 0.0))};
  }
  if (op == "repeat") return Tensors{ops::repeat(c.t("x"), c.shape("repeats"))};
  if (op == "repeat_interleave") {
    if (c.has("repeats")) return Tensors{ops::repeat_interleave(c.t("x"), c.i("repeats"), c.i("axis"))};
    return Tensors{ops::repeat_interleave(c.t("x"), c.t("_index"), c.i("axis"))};
  }
  if (op == "normalize") return Tensors{ops::normalize(c.t("x"), c.f("p"), c.i("axis"), c.f("eps"))};
  if (op == "roll") return Tensors{ops::roll(c.t("x"), c.i("shift"), c.i("axis"))};
  return std::nullopt;
}

Tensor run_op(const Case& c) {
  const std::string& op = c.op;
  if (is_unary(op)) return unary(c, op, c.t("x"));
  // ---- binary elementwise
  if (op == "add") return ops::add(c.t("a"), c.t("b"));
  if (op == "sub") return ops::sub(c.t("a"), c.t("b"));
  if (op == "mul") return ops::mul(c.t("a"), c.t("b"));
  if (op == "div") return ops::div(c.t("a"), c.t("b"));
  if (op == "pow") return ops::pow(c.t("a"), c.t("b"));
  if (op == "minimum") return ops::minimum(c.t("a"), c.t("b"));
  if (op == "maximum") return ops::maximum(c.t("a"), c.t("b"));
  if (op == "where") return ops::where(c.t("_cond"), c.t("a"), c.t("b"));
  if (op == "atan2") return ops::atan2(c.t("a"), c.t("b"));
  if (op == "floor_divide") return ops::floor_divide(c.t("a"), c.t("b"));
  if (op == "remainder") return ops::remainder(c.t("a"), c.t("b"));
  if (op == "fmod") return ops::fmod(c.t("a"), c.t("b"));
  // ---- linear algebra
  if (op == "matmul") return ops::matmul(c.t("a"), c.t("b"));
  if (op == "bmm") return ops::bmm(c.t("a"), c.t("b"));
  if (op == "linear") return ops::linear(c.t("x"), c.t("w"), c.opt_t("b"));
  if (op == "outer") return ops::outer(c.t("u"), c.t("v"));
  if (op == "monarch_matmul") return ops::monarch_matmul(c.t("x"), c.t("w1"), c.t("w2"));
  if (op == "pairwise_sq_distances") return ops::pairwise_sq_distances(c.t("a"), c.t("b"));
  // ---- convolution family
  if (op == "conv2d") {
    ops::Conv2dOptions o;
    o.stride = c.s2("stride", o.stride);
    o.padding = c.s2("padding", o.padding);
    o.dilation = c.s2("dilation", o.dilation);
    o.groups = c.i("groups", 1);
    return ops::conv2d(c.t("x"), c.t("w"), c.opt_t("b"), o);
  }
  if (op == "conv_transpose2d") {
    ops::ConvTranspose2dOptions o;
    o.stride = c.s2("stride", o.stride);
    o.padding = c.s2("padding", o.padding);
    o.output_padding = c.s2("output_padding", o.output_padding);
    o.dilation = c.s2("dilation", o.dilation);
    o.groups = c.i("groups", 1);
    return ops::conv_transpose2d(c.t("x"), c.t("w"), c.opt_t("b"), o);
  }
  if (op == "upsample_conv2d") return ops::upsample_conv2d(c.t("x"), c.t("w"), c.opt_t("b"), c.s2("padding", {0, 0}));
  if (op == "max_pool2d")
    return ops::max_pool2d(c.t("x"), c.s2("kernel", {1, 1}), c.s2("stride", {0, 0}), c.s2("padding", {0, 0}),
                           c.s2("dilation", {1, 1}), c.b("ceil_mode"));
  if (op == "avg_pool2d")
    return ops::avg_pool2d(c.t("x"), c.s2("kernel", {1, 1}), c.s2("stride", {0, 0}), c.s2("padding", {0, 0}),
                           c.b("count_include_pad", true), c.b("ceil_mode"));
  if (op == "adaptive_avg_pool2d") return ops::adaptive_avg_pool2d(c.t("x"), c.s2("output_size", {1, 1}));
  if (op == "global_avg_pool2d") return ops::global_avg_pool2d(c.t("x"), c.b("keepdim"));
  if (op == "upsample") {
    const auto mode = c.s("mode") == "bilinear" ? ops::UpsampleMode::bilinear : ops::UpsampleMode::nearest;
    if (c.has("scale1")) return ops::upsample(c.t("x"), c.f("scale1"), mode, c.b("align_corners"));
    ops::UpsampleOptions o;
    o.mode = mode;
    o.align_corners = c.b("align_corners");
    if (c.has("size")) o.size = c.s2("size", {1, 1});
    if (c.has("scale")) o.scale = std::array<double, 2>{c.nums("scale").at(0), c.nums("scale").at(1)};
    return ops::upsample(c.t("x"), o);
  }
  // ---- normalisation
  if (op == "layer_norm")
    return ops::layer_norm(c.t("x"), c.shape("normalized_shape"), c.opt_t("w"), c.opt_t("b"), c.f("eps", 1e-5));
  if (op == "rms_norm") return ops::rms_norm(c.t("x"), c.shape("normalized_shape"), c.opt_t("w"), c.f("eps", 1e-6));
  if (op == "group_norm") return ops::group_norm(c.t("x"), c.i("groups"), c.opt_t("w"), c.opt_t("b"), c.f("eps", 1e-5));
  if (op == "batch_norm")
    return ops::batch_norm(c.t("x"), c.opt_t("rm"), c.opt_t("rv"), c.opt_t("w"), c.opt_t("b"), c.b("training"), 0.1, c.f("eps", 1e-5));
  if (op == "glu") return ops::glu(c.t("x"), c.i("axis"));
  if (op == "group_norm_silu")
    return ops::group_norm_silu(c.t("x"), c.i("groups"), c.opt_t("w"), c.opt_t("b"), c.f("eps", 1e-5));
  // ---- attention, rotary
  if (op == "sdpa") {
    ops::AttentionOptions o;
    o.causal = c.b("causal");
    o.mask = c.opt_t("_mask");
    if (c.has("scale")) o.scale = c.f("scale");
    return ops::scaled_dot_product_attention(c.t("q"), c.t("k"), c.t("v"), o);
  }
  if (op == "apply_rotary")
    return ops::apply_rotary(c.t("x"), c.t("_cos"), c.t("_sin"),
                             c.s("layout") == "half_split" ? ops::RotaryLayout::half_split : ops::RotaryLayout::interleaved);
  // ---- FFT family
  if (op == "rfft") return ops::rfft(c.t("x"), c.i("n", -1));
  if (op == "irfft") return ops::irfft(c.t("x"), c.i("n", -1));
  if (op == "fft") return ops::fft(c.t("x"), c.b("inverse"));
  if (op == "complex_mul") return ops::complex_mul(c.t("a"), c.t("b"));
  if (op == "complex_div") return ops::complex_div(c.t("a"), c.t("b"));
  if (op == "complex_conj") return ops::complex_conj(c.t("a"));
  if (op == "complex_abs") return ops::complex_abs(c.t("a"));
  if (op == "fft_conv") {
    struct Restore {
      bool prev = ops::fft_conv_recompute();
      ~Restore() { ops::set_fft_conv_recompute(prev); }
    } restore;
    ops::set_fft_conv_recompute(c.b("recompute"));
    return ops::fft_conv(c.t("u"), c.t("k"), c.b("causal", true));
  }
  // ---- softmax and losses
  if (op == "softmax") return ops::softmax(c.t("x"), c.i("axis", -1));
  if (op == "log_softmax") return ops::log_softmax(c.t("x"), c.i("axis", -1));
  if (op == "cross_entropy") {
    ops::CrossEntropyOptions o;
    o.ignore_index = c.i("ignore_index", -100);
    o.label_smoothing = c.f("label_smoothing", 0.0);
    o.reduction = reduction(c);
    o.weight = c.opt_t("_weight");
    return ops::cross_entropy(c.t("x"), c.t("_target"), o);
  }
  if (op == "cross_entropy_prob" || op == "nll_loss") {
    ops::CrossEntropyOptions o;
    o.label_smoothing = c.f("label_smoothing", 0.0);
    o.ignore_index = c.i("ignore_index", -100);
    o.reduction = reduction(c);
    o.weight = c.opt_t("_weight");
    if (op == "nll_loss") return ops::nll_loss(c.t("x"), c.t("_target"), o);
    return ops::cross_entropy(c.t("x"), c.t("target"), o);
  }
  if (op == "bce_with_logits")
    return ops::binary_cross_entropy_with_logits(
        c.t("x"), c.t("target"), ops::BCEWithLogitsOptions{c.opt_t("_weight"), c.opt_t("_pos_weight"), reduction(c)});
  if (op == "bce") return ops::binary_cross_entropy(c.t("x"), c.t("target"), c.opt_t("_weight"), reduction(c));
  if (op == "smooth_l1_loss") return ops::smooth_l1_loss(c.t("x"), c.t("target"), reduction(c), c.f("beta"));
  if (op == "huber_loss") return ops::huber_loss(c.t("x"), c.t("target"), reduction(c), c.f("delta"));
  if (op == "kl_div") {
    const std::string r = c.s("reduction");
    const ops::KLReduction kr = r == "batchmean" ? ops::KLReduction::batchmean
                                : r == "sum"     ? ops::KLReduction::sum
                                : r == "none"    ? ops::KLReduction::none
                                                 : ops::KLReduction::mean;
    return ops::kl_div(c.t("x"), c.t("target"), kr, c.b("log_target"));
  }
  if (op == "mse_loss") return ops::mse_loss(c.t("x"), c.t("target"), reduction(c));
  if (op == "l1_loss") return ops::l1_loss(c.t("x"), c.t("target"), reduction(c));
  throw std::runtime_error("driver: unknown op " + op);
}

void write_tensor(std::ostream& out, const std::string& name, const Tensor& t) {
  const Tensor c = t.detach().to(DType::f64).contiguous();
  out << "T " << name << " " << dtype_name(t.dtype()) << " " << c.dim();
  for (auto d : c.shape()) out << " " << d;
  out << "\n";
  out.write(reinterpret_cast<const char*>(c.data<double>()), static_cast<std::streamsize>(c.numel() * sizeof(double)));
}

std::string one_line(std::string s) {
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CASES_FILE RESULTS_FILE [--threads N]\n", argv[0]);
    return 2;
  }
  for (int a = 3; a + 1 < argc; ++a)
    if (std::string(argv[a]) == "--threads") set_num_threads(std::atoi(argv[a + 1]));
  std::ifstream in(argv[1], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "torch_diff: cannot open %s\n", argv[1]);
    return 2;
  }
  std::ofstream out(argv[2], std::ios::binary);
  out.precision(17);
  int count = 0;
  while (true) {
    Case c;
    try {
      if (!read_case(in, c)) break;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "torch_diff: %s\n", e.what());
      return 2;
    }
    ++count;
    std::ostringstream body;
    try {
      std::optional<Tensors> shaped = shape_op(c);
      const Tensors ys = shaped ? *shaped : Tensors{run_op(c)};
      const bool multi = c.op == "split" || c.op == "chunk" || c.op == "unbind";
      auto output_name = [&](const char* prefix, std::size_t i) {
        return multi ? std::string(prefix) + "." + std::to_string(i) : std::string(prefix);
      };
      bool any_grad = false;
      for (const auto& name : c.order) any_grad |= c.tensors.at(name).grad;
      Tensors roots, cots;
      for (std::size_t i = 0; i < ys.size(); ++i) {
        const auto cot = c.tensors.find(output_name("cot", i));
        if (cot != c.tensors.end() && ys[i].requires_grad()) {
          roots.push_back(ys[i]);
          cots.push_back(cot->second.value);
        }
      }
      if (any_grad && !roots.empty()) autograd::backward(roots, cots);
      for (std::size_t i = 0; i < ys.size(); ++i) write_tensor(body, output_name("out", i), ys[i]);
      std::vector<std::string> undefined;
      for (const auto& name : c.order) {
        const Leaf& l = c.tensors.at(name);
        if (!l.grad) continue;
        Tensor g = l.base.grad();
        if (!g.defined()) {
          undefined.push_back(name);
          g = zeros(l.base.shape(), l.base.dtype());
        }
        write_tensor(body, "grad." + name, g);
      }
      for (const auto& name : undefined) body << "Z " << name << "\n";
      out << "RESULT " << c.id << " OK\n" << body.str() << "END\n";
    } catch (const std::exception& e) {
      out << "RESULT " << c.id << " ERR " << one_line(e.what()) << "\nEND\n";
    }
  }
  out.flush();
  std::fprintf(stderr, "torch_diff: %d cases\n", count);
  return out ? 0 : 1;
}
