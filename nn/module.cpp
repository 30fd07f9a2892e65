#include "nn/module.hpp"

#include <fmt/format.h>

#include <unordered_map>
#include <unordered_set>

#include "core/autograd.hpp"

namespace tg::nn {
namespace {

std::string join(const std::string& prefix, std::string_view name) {
  return prefix.empty() ? std::string(name) : prefix + "." + std::string(name);
}

class TensorWalker final : public Visitor {
 public:
  TensorWalker(std::string prefix, const std::function<void(const std::string&, Tensor&, bool)>& fn)
      : prefix_(std::move(prefix)), fn_(fn) {}
  void param(std::string_view name, Tensor& t) override {
    if (t.defined()) fn_(join(prefix_, name), t, true);
  }
  void buffer(std::string_view name, Tensor& t) override {
    if (t.defined()) fn_(join(prefix_, name), t, false);
  }
  void module(std::string_view name, Module& m) override {
    TensorWalker child(join(prefix_, name), fn_);
    m.visit(child);
  }

 private:
  std::string prefix_;
  const std::function<void(const std::string&, Tensor&, bool)>& fn_;
};

class ChildLister final : public Visitor {
 public:
  std::vector<std::pair<std::string, Module*>> children;
  void param(std::string_view, Tensor&) override {}
  void buffer(std::string_view, Tensor&) override {}
  void module(std::string_view name, Module& m) override { children.emplace_back(std::string(name), &m); }
};

}  // namespace

void for_each_tensor(Module& m, const std::function<void(const std::string&, Tensor&, bool)>& fn,
                     const std::string& prefix) {
  TensorWalker walker(prefix, fn);
  m.visit(walker);
}

std::vector<NamedTensor> Module::named_parameters() {
  std::vector<NamedTensor> out;
  for_each_tensor(*this, [&](const std::string& n, Tensor& t, bool is_param) {
    if (is_param) out.push_back({n, t});
  });
  return out;
}

std::vector<NamedTensor> Module::named_buffers() {
  std::vector<NamedTensor> out;
  for_each_tensor(*this, [&](const std::string& n, Tensor& t, bool is_param) {
    if (!is_param) out.push_back({n, t});
  });
  return out;
}

std::vector<NamedTensor> Module::state() {
  std::vector<NamedTensor> out;
  for_each_tensor(*this, [&](const std::string& n, Tensor& t, bool) { out.push_back({n, t}); });
  return out;
}

Tensors Module::parameters() {
  Tensors out;
  for (auto& p : named_parameters()) out.push_back(p.tensor);
  return out;
}

std::int64_t Module::num_parameters() {
  // A tensor registered under two names (tied weights) counts once, as in torch.
  std::unordered_set<const TensorImpl*> seen;
  std::int64_t n = 0;
  for (auto& p : named_parameters())
    if (seen.insert(p.tensor.impl_ptr().get()).second) n += p.tensor.numel();
  return n;
}

std::vector<std::pair<std::string, Module*>> Module::named_children() {
  ChildLister lister;
  visit(lister);
  return lister.children;
}

std::vector<std::pair<std::string, std::string>> Module::named_structures() {
  std::vector<std::pair<std::string, std::string>> out;
  std::function<void(Module&, const std::string&)> walk = [&](Module& m, const std::string& path) {
    if (const std::string s = m.structure(); !s.empty()) out.emplace_back(path, m.type_name() + "(" + s + ")");
    for (auto& [name, child] : m.named_children()) walk(*child, join(path, name));
  };
  walk(*this, "");
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : named_children()) child->train(on);
}

void Module::set_dropout_generator(Generator* gen) {
  use_dropout_generator(gen);
  for (auto& [name, child] : named_children()) child->set_dropout_generator(gen);
}

void Module::zero_grad() {
  for_each_tensor(*this, [](const std::string&, Tensor& t, bool is_param) {
    if (is_param) t.reset_grad();
  });
}

void Module::requires_grad_(bool on) {
  for_each_tensor(*this, [on](const std::string&, Tensor& t, bool is_param) {
    if (is_param) t.requires_grad_(on);
  });
}

void Module::clone_parameters() {
  NoGradGuard no_grad;
  // Tied tensors (one tensor under two names) stay tied: each is cloned once.
  std::unordered_map<const TensorImpl*, Tensor> clones;
  for_each_tensor(*this, [&](const std::string&, Tensor& t, bool is_param) {
    auto [it, fresh] = clones.try_emplace(t.impl_ptr().get());
    if (fresh) {
      const bool req = t.requires_grad();
      it->second = t.detach().clone();
      if (is_param && req) it->second.requires_grad_(true);
    }
    t = it->second;
  });
}

std::string Module::to_string() {
  // Recursive over the (shallow) module tree: depth is the model's nesting, a handful of levels.
  std::function<std::string(Module&, int)> render = [&](Module& m, int indent) {
    std::string head = m.type_name();
    const std::string extra = m.extra_repr();
    head += "(" + extra;
    const auto children = m.named_children();
    std::string body;
    for_each_tensor(m, [&](const std::string& n, Tensor& t, bool is_param) {
      if (n.find('.') != std::string::npos) return;  // a child's tensor: printed with the child
      body += fmt::format("{:{}}{}: {} {}{}\n", "", indent + 2, n, t.shape(), t.dtype(), is_param ? "" : " (buffer)");
    });
    for (auto& [name, child] : children)
      body += fmt::format("{:{}}({}): {}\n", "", indent + 2, name, render(*child, indent + 2));
    const std::int64_t count = m.num_parameters();
    if (body.empty()) return head + fmt::format(")  [{} params]", count);
    return head + fmt::format(")  [{} params] {{\n", count) + body + fmt::format("{:{}}}}", "", indent);
  };
  return render(*this, 0);
}

}  // namespace tg::nn
