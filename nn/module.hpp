// Module: the base of every layer and model. A module holds its parameters, buffers and child
// modules as plain members and lists them once, by name, in visit():
//
//   struct Block : nn::Module {
//     nn::LayerNorm norm;
//     nn::Linear fc;
//     void visit(nn::Visitor& v) override { v.module("norm", norm); v.module("fc", fc); }
//     std::string type_name() const override { return "Block"; }
//   };
//
// The names give parameter paths ("blocks.3.attn.qkv.weight"), which drive checkpoints, printing
// and optimizer state. Nothing is registered by pointer, so modules can be moved and copied (a
// copy shares the parameter tensors; clone_parameters() makes them independent).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.hpp"

namespace tg {
class Generator;
}

namespace tg::nn {

class Module;

// What visit() reports to. Undefined tensors (e.g. an absent bias) are skipped by every visitor.
class Visitor {
 public:
  virtual ~Visitor() = default;
  // A trainable tensor (optimizers update it; it is saved in checkpoints).
  virtual void param(std::string_view name, Tensor& t) = 0;
  // A non-trainable tensor that belongs to the module's state (running statistics, tables).
  virtual void buffer(std::string_view name, Tensor& t) = 0;
  virtual void module(std::string_view name, Module& m) = 0;
  // A list of children, named "<name>.0", "<name>.1", ...
  template <class M>
  void modules(std::string_view name, std::vector<M>& children) {
    for (std::size_t i = 0; i < children.size(); ++i) module(std::string(name) + "." + std::to_string(i), children[i]);
  }
};

struct NamedTensor {
  std::string name;
  Tensor tensor;  // a handle to the module's tensor (same data)
};

class Module {
 public:
  virtual ~Module() = default;

  // Lists parameters, buffers and children in a fixed order. Every module implements it.
  virtual void visit(Visitor& v) = 0;
  // "Linear", "TransformerBlock", ...; and a short description of the configuration.
  virtual std::string type_name() const = 0;
  virtual std::string extra_repr() const { return ""; }
  // The settings that decide what the parameters mean without showing in their shapes (attention
  // heads, norm groups, rotary frequencies, activation), as "key=value, ...". Checkpoints record
  // them, and loading refuses a module whose settings differ: the tensors would load and compute
  // something else. Empty (the default) for modules whose shapes say everything.
  virtual std::string structure() const { return ""; }

  // ---- traversal ------------------------------------------------------------------------------------------
  std::vector<NamedTensor> named_parameters();
  std::vector<NamedTensor> named_buffers();
  // Parameters and buffers: everything a checkpoint of the module holds.
  std::vector<NamedTensor> state();
  Tensors parameters();
  std::int64_t num_parameters();
  // Children first-level, by name.
  std::vector<std::pair<std::string, Module*>> named_children();
  // Every module in the tree with a structure(), by path ("" for this one), depth-first:
  // {path, "Type(structure)"}.
  std::vector<std::pair<std::string, std::string>> named_structures();

  // ---- modes ------------------------------------------------------------------------------------------------
  // Sets training mode here and in every child (dropout, label dropout, ... read it).
  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }
  // Points every dropout here and in every child (Dropout modules, attention dropout) at `gen`; nullptr
  // means the default generator again. A training loop that saves its generator in checkpoints sets
  // it, so that a resumed run draws the same masks as an uninterrupted one. `gen` is not owned: set
  // nullptr before it goes away.
  void set_dropout_generator(Generator* gen);

  // Resets the .grad() of every parameter.
  void zero_grad();
  // Marks every parameter as (not) requiring grad — e.g. to freeze a feature extractor.
  void requires_grad_(bool on);
  // Makes every parameter and buffer an independent copy (after copying a module).
  void clone_parameters();

  // The module tree with shapes and parameter counts.
  std::string to_string();

 protected:
  // This module's own dropout, if it has one (set_dropout_generator calls it on every module).
  virtual void use_dropout_generator(Generator*) {}

 private:
  bool training_ = true;
};

// Calls fn(path, tensor, is_param) for every parameter and buffer, depth-first in visit() order.
void for_each_tensor(Module& m, const std::function<void(const std::string&, Tensor&, bool is_param)>& fn,
                     const std::string& prefix = "");

}  // namespace tg::nn
