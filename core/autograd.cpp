// The autograd engine: recording (record), the backward pass (Engine::run) and graph teardown.
#include "core/autograd.hpp"

#include <algorithm>
#include <atomic>
#include <unordered_map>
#include <unordered_set>

#include "core/copy.hpp"

namespace tg {
namespace {

thread_local bool t_grad_enabled = true;
thread_local bool t_anomaly = false;  // per thread, like grad mode
std::atomic<std::uint64_t> g_next_sequence_nr{0};
std::atomic<std::int64_t> g_live_nodes{0};
std::atomic<autograd::RecordObserver> g_record_observer{nullptr};
// While a backward function runs: which of its inputs the engine wants gradients for.
thread_local const std::vector<char>* t_needed_inputs = nullptr;

}  // namespace

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }

namespace autograd {
void set_anomaly_mode(bool enabled) { t_anomaly = enabled; }
bool anomaly_mode() { return t_anomaly; }
std::int64_t live_node_count() { return g_live_nodes.load(); }
void set_record_observer(RecordObserver observer) { g_record_observer.store(observer); }
}  // namespace autograd

// ---- iterative teardown -----------------------------------------------------------------------------
// Dropping the last reference to a node destroys it, which drops its edges, which may destroy the
// next node, and so on: a chain of 100 000 ops would recurse 100 000 deep. Instead, the last
// reference is parked in a thread-local queue that the outermost release drains in a loop.
void release_node(std::shared_ptr<Node>&& node) {
  if (!node) return;
  if (node.use_count() > 1) {  // not the last owner: nothing is destroyed here
    node.reset();
    return;
  }
  thread_local std::vector<std::shared_ptr<Node>> pending;
  thread_local bool draining = false;
  pending.push_back(std::move(node));
  if (draining) return;
  draining = true;
  while (!pending.empty()) {
    std::shared_ptr<Node> n = std::move(pending.back());
    pending.pop_back();
    n.reset();  // may push more nodes onto `pending`
  }
  draining = false;
}

Node::Node(std::string name, std::uint64_t sequence_nr, std::vector<autograd::Edge> edges,
           std::vector<autograd::TensorMeta> input_meta, std::vector<autograd::TensorMeta> output_meta,
           autograd::BackwardFn backward)
    : name_(std::move(name)),
      sequence_nr_(sequence_nr),
      edges_(std::move(edges)),
      input_meta_(std::move(input_meta)),
      output_meta_(std::move(output_meta)),
      backward_(std::move(backward)) {
  g_live_nodes.fetch_add(1, std::memory_order_relaxed);
}

Node::~Node() {
  g_live_nodes.fetch_sub(1, std::memory_order_relaxed);
  for (autograd::Edge& e : edges_) release_node(std::move(e.node));
  backward_ = nullptr;  // saved tensors die here; their grad_fns go through release_node too
}

TensorImpl::~TensorImpl() { release_node(std::move(grad_fn)); }

// ---- recording ------------------------------------------------------------------------------------------
namespace autograd {
namespace {

std::string index_string(const Shape& shape, std::int64_t linear) {
  Shape idx = Shape::filled(shape.size(), 0);
  for (int d = shape.size() - 1; d >= 0; --d) {
    if (shape[d] > 0) {
      idx[d] = linear % shape[d];
      linear /= shape[d];
    }
  }
  return fmt::format("{}", idx);
}

void check_finite_outputs(std::string_view name, std::uint64_t seq, const Tensors& outputs) {
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    const Tensor& t = outputs[k];
    if (!t.defined() || !t.is_floating_point()) continue;
    if (auto bad = detail::first_non_finite(t)) {
      TG_FAIL("anomaly: '{}' (tape #{}) produced {} in its output {} (shape {}) at index {}", name, seq,
              detail::describe_non_finite(t, *bad), k, t.shape(), index_string(t.shape(), *bad));
    }
  }
}

Edge edge_to(const Tensor& t) {
  Edge e;
  if (!t.defined()) return e;
  const TensorImpl& impl = t.impl();
  if (impl.grad_fn) {
    e.node = impl.grad_fn;
    e.input_nr = impl.output_nr;
  } else if (impl.requires_grad) {
    e.leaf = t.impl_ptr();
  }
  return e;
}

template <class Range>
bool any_requires(const Range& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Tensors record_impl(std::string_view name, const Tensor* inputs, std::size_t n_inputs, Tensors outputs,
                    BackwardFn backward) {
  const bool record_it = any_requires(std::span<const Tensor>(inputs, n_inputs));
  if (anomaly_mode())
    check_finite_outputs(name, g_next_sequence_nr.load(std::memory_order_relaxed), outputs);
  if (!record_it) return outputs;
  if (RecordObserver observe = g_record_observer.load(std::memory_order_relaxed)) observe(name);

  std::vector<Edge> edges;
  std::vector<TensorMeta> input_meta;
  edges.reserve(n_inputs);
  input_meta.reserve(n_inputs);
  for (std::size_t i = 0; i < n_inputs; ++i) {
    edges.push_back(edge_to(inputs[i]));
    input_meta.push_back(inputs[i].defined() ? TensorMeta{inputs[i].shape(), inputs[i].dtype()}
                                             : TensorMeta{Shape{}, DType::f32});
  }
  std::vector<TensorMeta> output_meta;
  output_meta.reserve(outputs.size());
  for (const Tensor& o : outputs) output_meta.push_back({o.shape(), o.dtype()});

  const std::uint64_t seq = g_next_sequence_nr.fetch_add(1, std::memory_order_relaxed);
  auto node = std::make_shared<Node>(std::string(name), seq, std::move(edges), std::move(input_meta),
                                     std::move(output_meta), std::move(backward));
  // Fresh handles: the backward function may hold the original output tensors without a cycle.
  Tensors result;
  result.reserve(outputs.size());
  for (std::size_t k = 0; k < outputs.size(); ++k) {
    const Tensor& o = outputs[k];
    if (!o.is_floating_point()) {  // integer outputs (indices) are not differentiable
      result.push_back(o);
      continue;
    }
    auto impl = std::make_shared<TensorImpl>();
    impl->storage = o.storage();
    impl->shape = o.shape();
    impl->strides = o.strides();
    impl->offset = o.offset();
    impl->dtype = o.dtype();
    impl->grad_fn = node;
    impl->output_nr = static_cast<std::uint32_t>(k);
    result.emplace_back(std::move(impl));
  }
  return result;
}

}  // namespace

bool any_requires_grad(std::initializer_list<Tensor> inputs) { return any_requires(inputs); }
bool any_requires_grad(const Tensors& inputs) { return any_requires(inputs); }

Tensor record(std::string_view name, std::initializer_list<Tensor> inputs, Tensor output, UnaryBackwardFn backward) {
  Tensors outs{std::move(output)};
  BackwardFn fn;
  if (any_requires(inputs)) fn = [b = std::move(backward)](const Tensors& g) { return b(g[0]); };
  return record_impl(name, inputs.begin(), inputs.size(), std::move(outs), std::move(fn))[0];
}

Tensor record(std::string_view name, const Tensors& inputs, Tensor output, UnaryBackwardFn backward) {
  Tensors outs{std::move(output)};
  BackwardFn fn;
  if (any_requires(inputs)) fn = [b = std::move(backward)](const Tensors& g) { return b(g[0]); };
  return record_impl(name, inputs.data(), inputs.size(), std::move(outs), std::move(fn))[0];
}

Tensors record(std::string_view name, const Tensors& inputs, Tensors outputs, BackwardFn backward) {
  return record_impl(name, inputs.data(), inputs.size(), std::move(outputs), std::move(backward));
}

bool input_needs_grad(std::size_t i) {
  return t_needed_inputs == nullptr || (i < t_needed_inputs->size() && (*t_needed_inputs)[i] != 0);
}

SavedTensor::SavedTensor(const Tensor& t) : tensor_(t), version_(t.defined() ? t.version() : 0) {}

Tensor SavedTensor::get() const {
  if (tensor_.defined() && tensor_.version() != version_) {
    TG_FAIL(
        "a tensor saved for backward (shape {}, {}) was modified in place after it was saved "
        "(storage version {} now, {} when saved); compute on a clone() instead of writing into it",
        tensor_.shape(), tensor_.dtype(), tensor_.version(), version_);
  }
  return tensor_;
}

}  // namespace autograd

// ---- the backward pass -----------------------------------------------------------------------------------
class Engine {
 public:
  // Targets (for autograd::grad): capture gradients of these tensors instead of accumulating.
  struct Targets {
    std::unordered_map<const TensorImpl*, std::size_t> leaves;
    std::unordered_map<const Node*, std::vector<std::pair<std::uint32_t, std::size_t>>> outputs;
    Tensors captured;
  };

  static void run(const Tensors& roots, const Tensors& root_grads, bool retain_graph, Targets* targets,
                  const char* caller);

 private:
  static void accumulate(Tensor& slot, const Tensor& g) {
    if (slot.defined()) detail::accumulate(slot, g);
    else slot = g;
  }
  static void accumulate_into_leaf(TensorImpl& leaf, const Tensor& g);
};

void Engine::accumulate_into_leaf(TensorImpl& leaf, const Tensor& g) {
  // Backward passes on several threads may reach one leaf: its gradient is read, summed and
  // written back under the leaf's lock (as Tensor::grad / set_grad / reset_grad take it).
  // A leaf switched to requires_grad_(false) after the graph was built (a frozen parameter) gets
  // nothing, as in torch.
  if (!leaf.requires_grad) return;
  std::lock_guard lock(detail::leaf_grad_mutex(leaf));
  if (!leaf.grad) {
    // Keep an owned, contiguous gradient: `g` may be shared with other leaves or be a broadcast view.
    const bool owned = g.storage().use_count() == 1 && g.is_contiguous() && g.offset() == 0 &&
                       static_cast<std::size_t>(g.numel()) * g.element_size() == g.storage()->nbytes();
    leaf.grad = owned ? g.detach().impl_ptr() : g.clone().impl_ptr();
  } else {
    Tensor acc(std::move(leaf.grad));  // in place unless someone else holds this gradient
    detail::accumulate(acc, g);
    leaf.grad = acc.impl_ptr();
  }
}

void Engine::run(const Tensors& roots, const Tensors& root_grads, bool retain_graph, Targets* targets,
                 const char* caller) {
  NoGradGuard no_grad;  // backward functions never record
  TG_CHECK(root_grads.empty() || root_grads.size() == roots.size(),
           "{}: got {} gradients for {} tensors", caller, root_grads.size(), roots.size());

  // 1. Seed gradients.
  Tensors seeds(roots.size());
  for (std::size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    TG_CHECK(r.defined(), "{}: tensor {} is undefined", caller, i);
    TG_CHECK(r.requires_grad(),
             "{}: tensor {} (shape {}) does not require grad: it is neither a leaf marked with "
             "requires_grad_() nor computed from one with grad mode on",
             caller, i, r.shape());
    Tensor g = root_grads.empty() ? Tensor() : root_grads[i];
    if (!g.defined()) {
      TG_CHECK(r.numel() == 1,
               "{}: a gradient can be implied only for a one-element tensor, but tensor {} has shape {}; "
               "pass the gradient explicitly",
               caller, i, r.shape());
      g = ones(r.shape(), r.dtype());
    }
    TG_CHECK(g.shape() == r.shape(), "{}: gradient {} has shape {} but its tensor has shape {}", caller, i,
             g.shape(), r.shape());
    TG_CHECK(g.dtype() == r.dtype(), "{}: gradient {} has dtype {} but its tensor has dtype {}", caller, i,
             g.dtype(), r.dtype());
    seeds[i] = g.detach();
  }

  // 2. Collect the reachable nodes (iterative DFS) and order them by decreasing sequence number.
  std::vector<Node*> nodes;
  std::unordered_set<Node*> seen;
  std::vector<Node*> stack;
  for (const Tensor& r : roots)
    if (Node* n = r.grad_fn().get(); n && seen.insert(n).second) stack.push_back(n);
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    nodes.push_back(n);
    for (const autograd::Edge& e : n->edges_)
      if (e.node && seen.insert(e.node.get()).second) stack.push_back(e.node.get());
  }
  std::sort(nodes.begin(), nodes.end(), [](Node* a, Node* b) { return a->sequence_nr_ > b->sequence_nr_; });

  // 3. With targets, only nodes on a path to a target run ("useful"); seq order ascending lets
  //    each node look at its (older) inputs' flags.
  std::unordered_map<Node*, bool> useful;
  if (targets) {
    for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
      Node* n = *it;
      bool u = false;
      for (const autograd::Edge& e : n->edges_) {
        if (e.node) u = u || useful[e.node.get()] || targets->outputs.count(e.node.get());
        else if (auto leaf = e.leaf.lock()) u = u || targets->leaves.count(leaf.get());
      }
      useful[n] = u;
    }
  }
  auto capture_leaf = [&](const std::shared_ptr<TensorImpl>& leaf, const Tensor& g) {
    if (targets) {
      auto it = targets->leaves.find(leaf.get());
      if (it != targets->leaves.end()) accumulate(targets->captured[it->second], g);
    } else {
      accumulate_into_leaf(*leaf, g);
    }
  };

  // 4. Seed the buffers.
  std::unordered_map<Node*, Tensors> buffers;
  for (std::size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    if (r.grad_fn()) {
      Tensors& buf = buffers[r.grad_fn().get()];
      buf.resize(r.grad_fn()->num_outputs());
      accumulate(buf[r.impl().output_nr], seeds[i]);
    } else {
      capture_leaf(r.impl_ptr(), seeds[i]);
    }
  }

  // 5. Run the tape backwards.
  std::vector<char> needed;
  for (Node* n : nodes) {
    auto bit = buffers.find(n);
    if (bit == buffers.end()) continue;  // no gradient reached this node
    Tensors grads = std::move(bit->second);
    buffers.erase(bit);
    if (targets) {
      if (auto t = targets->outputs.find(n); t != targets->outputs.end())
        for (auto [output_nr, index] : t->second)
          if (grads[output_nr].defined()) accumulate(targets->captured[index], grads[output_nr]);
      if (!useful[n]) continue;
    }
    TG_CHECK(!n->released_,
             "{}: trying to backward through '{}' (tape #{}) a second time, but the first backward released "
             "the graph (its saved tensors and state); pass retain_graph=true to the first call to backward twice",
             caller, n->name_, n->sequence_nr_);
    for (std::size_t k = 0; k < grads.size(); ++k)
      if (!grads[k].defined()) grads[k] = zeros(n->output_meta_[k].shape, n->output_meta_[k].dtype);

    needed.assign(n->edges_.size(), 0);
    for (std::size_t i = 0; i < n->edges_.size(); ++i) {
      const autograd::Edge& e = n->edges_[i];
      if (!targets) {
        needed[i] = e.leads_somewhere();
      } else if (e.node) {
        needed[i] = useful[e.node.get()] || targets->outputs.count(e.node.get());
      } else if (auto leaf = e.leaf.lock()) {
        needed[i] = targets->leaves.count(leaf.get()) > 0;
      }
    }

    Tensors input_grads;
    {
      t_needed_inputs = &needed;
      struct ResetNeeded {  // also when a backward throws something other than tg::Error
        ~ResetNeeded() { t_needed_inputs = nullptr; }
      } reset_needed;
      try {
        input_grads = n->backward_(grads);
      } catch (const Error& err) {
        throw Error(fmt::format("{}\n  (in the backward of '{}', tape #{})", err.what(), n->name_, n->sequence_nr_));
      }
    }
    grads.clear();

    TG_CHECK(input_grads.size() == n->edges_.size(),
             "backward of '{}' (tape #{}) returned {} gradients for {} inputs", n->name_, n->sequence_nr_,
             input_grads.size(), n->edges_.size());
    for (std::size_t i = 0; i < input_grads.size(); ++i) {
      const Tensor& g = input_grads[i];
      if (!g.defined() || !needed[i]) continue;
      const autograd::TensorMeta& meta = n->input_meta_[i];
      TG_CHECK(g.shape() == meta.shape,
               "backward of '{}' (tape #{}) returned a gradient of shape {} for its input {} of shape {}",
               n->name_, n->sequence_nr_, g.shape(), i, meta.shape);
      TG_CHECK(g.dtype() == meta.dtype,
               "backward of '{}' (tape #{}) returned a {} gradient for its input {} of dtype {}", n->name_,
               n->sequence_nr_, g.dtype(), i, meta.dtype);
      if (autograd::anomaly_mode()) {
        if (auto bad = detail::first_non_finite(g)) {
          TG_FAIL("anomaly: the backward of '{}' (tape #{}) produced {} in the gradient of its input {} "
                  "(shape {}) at index {}",
                  n->name_, n->sequence_nr_, detail::describe_non_finite(g, *bad), i, g.shape(),
                  autograd::index_string(g.shape(), *bad));
        }
      }
      const autograd::Edge& e = n->edges_[i];
      if (e.node) {
        Tensors& buf = buffers[e.node.get()];
        buf.resize(e.node->num_outputs());
        accumulate(buf[e.input_nr], g);
      } else if (auto leaf = e.leaf.lock()) {
        capture_leaf(leaf, g);
      }
    }
    if (!retain_graph) {
      n->backward_ = nullptr;  // frees the saved tensors
      n->released_ = true;
    }
  }
}

namespace autograd {

void backward(const Tensors& roots, const Tensors& grads, bool retain_graph) {
  Engine::run(roots, grads, retain_graph, nullptr, "backward");
}

Tensors grad(const Tensors& outputs, const Tensors& inputs, const Tensors& grad_outputs, bool retain_graph,
             bool allow_unused) {
  Engine::Targets targets;
  targets.captured.resize(inputs.size());
  std::vector<std::pair<std::size_t, std::size_t>> repeated;  // (input, earlier input of the same leaf)
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& x = inputs[i];
    TG_CHECK(x.defined(), "grad: input {} is undefined", i);
    TG_CHECK(x.requires_grad(), "grad: input {} (shape {}) does not require grad", i, x.shape());
    if (x.grad_fn()) targets.outputs[x.grad_fn().get()].push_back({x.impl().output_nr, i});
    else if (const auto [it, fresh] = targets.leaves.try_emplace(&x.impl(), i); !fresh) repeated.push_back({i, it->second});
  }
  Engine::run(outputs, grad_outputs, retain_graph, &targets, "grad");
  // A leaf listed twice gets its gradient twice, in buffers of its own.
  for (const auto& [i, first] : repeated)
    if (targets.captured[first].defined()) targets.captured[i] = targets.captured[first].clone();
  std::unordered_set<const TensorImpl*> returned;  // an intermediate listed twice shares one handle: cloned too
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    Tensor& g = targets.captured[i];
    if (g.defined() && !returned.insert(&g.impl()).second) g = g.clone();
    if (!g.defined()) {
      TG_CHECK(allow_unused,
               "grad: input {} (shape {}) is not used to compute the outputs; pass allow_unused=true to get "
               "zeros for it",
               i, inputs[i].shape());
      g = zeros(inputs[i].shape(), inputs[i].dtype());
    } else if (!g.is_contiguous() || g.storage().use_count() > 1) {
      g = g.clone();
    }
  }
  return targets.captured;
}

Tensor jacobian(const std::function<Tensor(const Tensor&)>& f, const Tensor& x) {
  TG_CHECK(x.defined() && x.is_floating_point(), "jacobian: x must be a floating-point tensor, got {}",
           x.defined() ? fmt::format("{} {}", dtype_name(x.dtype()), x.shape()) : std::string("an undefined tensor"));
  EnableGradGuard enable;
  const Tensor input = x.detach().clone().requires_grad_();
  const Tensor y = f(input);
  TG_CHECK(y.defined() && y.is_floating_point(), "jacobian: f must return a floating-point tensor, got {}",
           y.defined() ? fmt::format("{} {}", dtype_name(y.dtype()), y.shape()) : std::string("an undefined tensor"));
  const std::int64_t m = y.numel(), n = input.numel();
  Tensor jac = zeros({m, n}, y.dtype());  // [m, n]
  if (m == 0 || n == 0 || !y.requires_grad()) return jac;
  for (std::int64_t i = 0; i < m; ++i) {
    Tensor seed = zeros({m}, y.dtype());  // e_i, shaped like y
    seed.narrow(0, i, 1).fill_(1.0);
    const Tensor row = grad({y}, {input}, {seed.reshape(y.shape())}, /*retain_graph=*/i + 1 < m, /*allow_unused=*/true)[0];
    jac.select(0, i).copy_(row.reshape({n}));
  }
  return jac;
}

}  // namespace autograd
}  // namespace tg
