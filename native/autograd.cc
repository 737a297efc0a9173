// Autograd entry points: requires-grad flags, .grad, backward, and gradients
// of chosen outputs with respect to chosen inputs (torch::autograd::grad),
// which gradient checkpointing needs segment by segment.
#include "common.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/variable.h>

namespace atelier {
namespace {

std::vector<at::Tensor> tensorList(const Napi::Value& v, const char* what, bool allowNull) {
  if (!v.IsArray()) throw std::runtime_error(std::string(what) + ": expected an array of tensors");
  auto arr = v.As<Napi::Array>();
  std::vector<at::Tensor> out;
  out.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value e = arr.Get(i);
    if (allowNull && (e.IsNull() || e.IsUndefined())) {
      out.emplace_back();
    } else {
      out.push_back(tensorArg(e, what));
    }
  }
  return out;
}

Napi::Value tensorArray(Napi::Env env, const std::vector<at::Tensor>& ts) {
  auto arr = Napi::Array::New(env, ts.size());
  for (size_t i = 0; i < ts.size(); ++i) arr.Set(i, tensorValue(env, ts[i]));
  return arr;
}

ATELIER_ENTRY(SetRequiresGrad) {
  return guarded(info, [&] {
    at::Tensor t = tensorArg(info[0], "setRequiresGrad");
    t.set_requires_grad(info[1].As<Napi::Boolean>().Value());
    return info.Env().Undefined();
  });
}

ATELIER_ENTRY(IsLeaf) {
  return guarded(info, [&] {
    return Napi::Boolean::New(info.Env(), tensorArg(info[0], "isLeaf").is_leaf()).As<Napi::Value>();
  });
}

ATELIER_ENTRY(RetainGrad) {
  return guarded(info, [&] {
    tensorArg(info[0], "retainGrad").retain_grad();
    return info.Env().Undefined();
  });
}

// grad(id) -> a new handle to .grad, or null.
ATELIER_ENTRY(Grad) {
  return guarded(info, [&] { return tensorValue(info.Env(), tensorArg(info[0], "grad").grad()); });
}

// setGrad(id, gradId | null): null clears .grad (zero_grad(set_to_none=True)).
ATELIER_ENTRY(SetGrad) {
  return guarded(info, [&] {
    at::Tensor t = tensorArg(info[0], "setGrad");
    t.mutable_grad() = info[1].IsNull() ? at::Tensor() : tensorArg(info[1], "setGrad");
    return info.Env().Undefined();
  });
}

// backward(outputs, gradOutputs, retainGraph, createGraph): accumulates into
// the leaves' .grad. A null gradient stands for ones (scalar outputs only).
ATELIER_ENTRY(Backward) {
  return guarded(info, [&] {
    auto outputs = tensorList(info[0], "backward outputs", false);
    auto grads = tensorList(info[1], "backward gradients", true);
    bool retain = info[2].As<Napi::Boolean>().Value();
    bool create = info[3].As<Napi::Boolean>().Value();
    torch::autograd::backward(outputs, grads, retain, create);
    return info.Env().Undefined();
  });
}

// gradOf(outputs, inputs, gradOutputs, retainGraph, createGraph, allowUnused)
// -> one gradient (or null when unused) per input; .grad is not touched.
ATELIER_ENTRY(GradOf) {
  return guarded(info, [&] {
    auto outputs = tensorList(info[0], "grad outputs", false);
    auto inputs = tensorList(info[1], "grad inputs", false);
    auto gradOutputs = tensorList(info[2], "grad gradOutputs", true);
    bool retain = info[3].As<Napi::Boolean>().Value();
    bool create = info[4].As<Napi::Boolean>().Value();
    bool allowUnused = info[5].As<Napi::Boolean>().Value();
    auto result = torch::autograd::grad(outputs, inputs, gradOutputs, retain, create, allowUnused);
    return tensorArray(info.Env(), result);
  });
}

// setGradEnabled(bool) -> previous state.
ATELIER_ENTRY(SetGradEnabled) {
  bool prev = at::GradMode::is_enabled();
  at::GradMode::set_enabled(info[0].As<Napi::Boolean>().Value());
  return Napi::Boolean::New(info.Env(), prev);
}

ATELIER_ENTRY(IsGradEnabled) { return Napi::Boolean::New(info.Env(), at::GradMode::is_enabled()); }

}  // namespace

void registerAutograd(Napi::Env env, Napi::Object exports) {
  exports.Set("setRequiresGrad", Napi::Function::New(env, SetRequiresGrad, "setRequiresGrad"));
  exports.Set("isLeaf", Napi::Function::New(env, IsLeaf, "isLeaf"));
  exports.Set("retainGrad", Napi::Function::New(env, RetainGrad, "retainGrad"));
  exports.Set("grad", Napi::Function::New(env, Grad, "grad"));
  exports.Set("setGrad", Napi::Function::New(env, SetGrad, "setGrad"));
  exports.Set("backward", Napi::Function::New(env, Backward, "backward"));
  exports.Set("gradOf", Napi::Function::New(env, GradOf, "gradOf"));
  exports.Set("setGradEnabled", Napi::Function::New(env, SetGradEnabled, "setGradEnabled"));
  exports.Set("isGradEnabled", Napi::Function::New(env, IsGradEnabled, "isGradEnabled"));
}

}  // namespace atelier
