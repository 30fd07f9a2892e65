// The tape: reverse-mode automatic differentiation.
//
// Every differentiable op computes its outputs and then calls autograd::record(), which — when
// grad mode is on and an input requires grad — creates a Node holding the op's backward function,
// stamped with an increasing sequence number. Those numbers are the tape: every node's inputs were
// recorded before it, so running the reachable nodes in decreasing sequence order is a valid
// reverse topological order. backward() walks the graph iteratively (no recursion anywhere, also not
// when a long graph is destroyed), keeps non-leaf gradients in a per-call map and accumulates only
// into leaves' .grad().
//
// record() is public: built-in ops and user-defined ops use the same mechanism. A custom op:
//
//   // y = x^3, dy/dx = 3x^2
//   Tensor cube(const Tensor& x) {
//     Tensor y = x * x * x;  // ...or any kernel you like, computed without recording:
//     return autograd::record("cube", {x}, y, [sx = autograd::SavedTensor(x)](const Tensor& gy) {
//       Tensor x = sx.get();            // version-checked: throws if x was modified in place
//       return Tensors{gy * 3.0 * x * x};
//     });
//   }
//
// (In that sketch the forward itself would record; wrap it in NoGradGuard or call kernels.)
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>

#include "core/tensor.hpp"

namespace tg {

// ---- grad mode ----------------------------------------------------------------------------------------
// A thread-local switch: when off, no op records anything. Kernels never read it.
bool grad_enabled();
void set_grad_enabled(bool enabled);

class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

class EnableGradGuard {
 public:
  EnableGradGuard() : prev_(grad_enabled()) { set_grad_enabled(true); }
  ~EnableGradGuard() { set_grad_enabled(prev_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool prev_;
};

namespace autograd {

// Maps the gradients of an op's outputs to the gradients of its inputs, one per input (an
// undefined Tensor where an input needs no gradient). Runs with grad mode off.
using BackwardFn = std::function<Tensors(const Tensors& grad_outputs)>;
using UnaryBackwardFn = std::function<Tensors(const Tensor& grad_output)>;

// Where a gradient flows: to another node's output `input_nr`, or to a leaf tensor, or nowhere.
struct Edge {
  std::shared_ptr<Node> node;
  std::uint32_t input_nr = 0;
  std::weak_ptr<TensorImpl> leaf;
  bool leads_somewhere() const { return node != nullptr || !leaf.expired(); }
};

struct TensorMeta {
  Shape shape;
  DType dtype;
};

}  // namespace autograd

// A recorded op on the tape. Owned by its outputs (grad_fn) and by the nodes that consume them.
class Node {
 public:
  Node(std::string name, std::uint64_t sequence_nr, std::vector<autograd::Edge> edges,
       std::vector<autograd::TensorMeta> input_meta, std::vector<autograd::TensorMeta> output_meta,
       autograd::BackwardFn backward);
  ~Node();  // iterative: never recurses through a long chain of nodes
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  const std::string& name() const { return name_; }
  std::uint64_t sequence_nr() const { return sequence_nr_; }
  const std::vector<autograd::Edge>& next_edges() const { return edges_; }
  const std::vector<autograd::TensorMeta>& input_meta() const { return input_meta_; }
  const std::vector<autograd::TensorMeta>& output_meta() const { return output_meta_; }
  std::size_t num_outputs() const { return output_meta_.size(); }
  bool released() const { return released_; }

 private:
  friend class Engine;
  std::string name_;
  std::uint64_t sequence_nr_;
  std::vector<autograd::Edge> edges_;
  std::vector<autograd::TensorMeta> input_meta_;
  std::vector<autograd::TensorMeta> output_meta_;
  autograd::BackwardFn backward_;
  bool released_ = false;
};

namespace autograd {

// True when an op on these inputs must be recorded: grad mode is on and an input requires grad.
bool any_requires_grad(std::initializer_list<Tensor> inputs);
bool any_requires_grad(const Tensors& inputs);

// Records op `name` with `inputs` (in the order its backward returns their gradients) and
// `outputs`. Returns the outputs as tensors that carry the new node (fresh handles over the same
// data, so a backward function may capture the output tensors it was given without creating a
// reference cycle). When nothing needs recording it returns the outputs unchanged. Also runs the
// anomaly check on the outputs when anomaly mode is on.
Tensor record(std::string_view name, std::initializer_list<Tensor> inputs, Tensor output, UnaryBackwardFn backward);
Tensor record(std::string_view name, const Tensors& inputs, Tensor output, UnaryBackwardFn backward);
Tensors record(std::string_view name, const Tensors& inputs, Tensors outputs, BackwardFn backward);

// Inside a backward function: whether the engine wants the gradient of input i in this pass
// (ops skip computing gradients nobody asked for, e.g. a weight's gradient in autograd::grad).
bool input_needs_grad(std::size_t i);

// A tensor kept for the backward pass. get() checks that it was not modified in place since it
// was saved (storage version), and raises a clear error otherwise.
class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& t);
  Tensor get() const;
  bool defined() const { return tensor_.defined(); }

 private:
  Tensor tensor_;
  std::uint32_t version_ = 0;
};

// Backpropagates from several roots at once (grads[i] for roots[i]; an undefined grad means 1 for
// a one-element root). Accumulates into leaves' .grad().
void backward(const Tensors& roots, const Tensors& grads = {}, bool retain_graph = false);

// Gradients of `outputs` (seeded with `grad_outputs`, default 1 for one-element outputs) with
// respect to `inputs` — leaves or intermediate tensors — without touching any .grad(). Only the
// part of the graph that leads to `inputs` runs. An input the outputs do not depend on raises an
// error unless allow_unused, in which case its gradient is zeros. The results are constants (no
// create_graph): backward functions run without recording, so higher-order gradients (a gradient
// of a gradient) are not available; see docs/DESIGN.md, "The tape".
Tensors grad(const Tensors& outputs, const Tensors& inputs, const Tensors& grad_outputs = {},
             bool retain_graph = false, bool allow_unused = false);

// The Jacobian of y = f(x) as a matrix [y.numel(), x.numel()] of y's dtype: row i holds dy_i/dx,
// both flattened row-major. f runs once (with gradients on, on a detached copy of x); each row is
// one backward pass, so this is for small maps: tests, and e.g. a flow's log |det J| through
// ops::dense::slogdet. A y that does not depend on x gives zeros.
Tensor jacobian(const std::function<Tensor(const Tensor&)>& f, const Tensor& x);

// ---- anomaly mode -----------------------------------------------------------------------------------------
// Per thread, like grad mode: it applies to the ops and backward passes the calling thread runs.
// When on, every op's outputs (forward) and every computed gradient (backward) are checked for
// NaN/Inf, and the first one found raises an error naming the op and its place on the tape.
void set_anomaly_mode(bool enabled);
bool anomaly_mode();
class AnomalyModeGuard {
 public:
  explicit AnomalyModeGuard(bool enabled = true) : prev_(anomaly_mode()) { set_anomaly_mode(enabled); }
  ~AnomalyModeGuard() { set_anomaly_mode(prev_); }
  AnomalyModeGuard(const AnomalyModeGuard&) = delete;
  AnomalyModeGuard& operator=(const AnomalyModeGuard&) = delete;

 private:
  bool prev_;
};

// Number of nodes alive (for tests of graph release and leaks).
std::int64_t live_node_count();

// Calls `observer` with the op name whenever a node is recorded (nullptr to remove). The test
// suite uses it to check that every op with a backward rule is listed in the op registry.
using RecordObserver = void (*)(std::string_view op_name);
void set_record_observer(RecordObserver observer);

}  // namespace autograd
}  // namespace tg
