// Gradient checkpointing: an autograd node whose backward calls back into
// JavaScript, which re-runs the segment with grad and backpropagates through
// it (the reentrant scheme of pytorch/pytorch torch/utils/checkpoint.py,
// CheckpointFunction). The forward ran without grad, so only the segment's
// inputs are kept; the node hands the engine their gradients, so the outer
// graph accumulates exactly as it would without checkpointing.
//
// The callback runs on the thread that called backward — the JS thread, since
// libtorch's engine runs CPU nodes on the calling thread. A node reached from a
// device worker thread (a CUDA graph) refuses with a clear error instead.
#include "common.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/variable.h>

#include <mutex>
#include <thread>

namespace atelier {
namespace {

using torch::autograd::variable_list;

Napi::FunctionReference& callback() {
  static Napi::FunctionReference ref;
  return ref;
}
std::thread::id jsThread;
std::mutex deadMutex;
std::vector<uint32_t> deadSegments;  // graphs freed before their backward ran

struct CheckpointNode : public torch::autograd::Node {
  uint32_t segment;
  std::vector<at::Tensor> saved;  // the segment's inputs, detached
  std::vector<bool> needsGrad;
  bool ran = false;

  variable_list apply(variable_list&& grads) override {
    if (std::this_thread::get_id() != jsThread) {
      throw std::runtime_error(
          "gradient checkpointing: the backward of a checkpointed segment ran off the JavaScript thread "
          "(a CUDA graph); checkpointing is CPU-only for now — turn gradient_checkpointing off on CUDA");
    }
    if (ran) throw std::runtime_error("gradient checkpointing: a checkpointed segment cannot be backpropagated twice");
    ran = true;
    Napi::Env env = callback().Env();
    Napi::HandleScope scope(env);
    auto inputs = Napi::Array::New(env, saved.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      if (!saved[i].defined()) {
        inputs.Set(i, env.Null());
        continue;
      }
      at::Tensor x = saved[i].detach();
      if (needsGrad[i]) x.set_requires_grad(true);
      inputs.Set(i, tensorValue(env, x));
    }
    auto gradArr = Napi::Array::New(env, grads.size());
    for (size_t i = 0; i < grads.size(); ++i) gradArr.Set(i, tensorValue(env, grads[i]));
    saved.clear();
    Napi::Value result;
    try {
      result = callback().Call({Napi::Number::New(env, segment), inputs, gradArr});
    } catch (const Napi::Error& e) {
      throw std::runtime_error(e.Message());
    }
    if (!result.IsArray() || result.As<Napi::Array>().Length() != needsGrad.size()) {
      throw std::runtime_error("gradient checkpointing: the segment backward returned the wrong number of gradients");
    }
    auto arr = result.As<Napi::Array>();
    variable_list out(needsGrad.size());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value v = arr.Get(i);
      if (v.IsNull() || v.IsUndefined()) continue;
      uint32_t id = v.As<Napi::Number>().Uint32Value();
      out[i] = store().get(id);
      store().release(id);  // JS handed the id over
    }
    return out;
  }

  void release_variables() override { saved.clear(); }

  ~CheckpointNode() override {
    if (!ran) {
      std::lock_guard<std::mutex> lock(deadMutex);
      deadSegments.push_back(segment);
    }
  }
};

// checkpointSetBackward(fn): fn(segment, inputIds, gradIds) -> one id or null
// per input. The ids it receives are its own to free; those it returns move
// to the addon.
ATELIER_ENTRY(CheckpointSetBackward) {
  return guarded(info, [&] {
    callback() = Napi::Persistent(info[0].As<Napi::Function>());
    callback().SuppressDestruct();
    jsThread = std::this_thread::get_id();
    return info.Env().Undefined();
  });
}

// checkpointAttach(segment, inputIds, outputIds) -> new output ids that carry
// the node as their grad_fn. Outputs must come from a no-grad forward.
ATELIER_ENTRY(CheckpointAttach) {
  return guarded(info, [&] {
    if (callback().IsEmpty()) throw std::runtime_error("checkpointAttach: no backward callback registered");
    uint32_t segment = info[0].As<Napi::Number>().Uint32Value();
    auto inArr = info[1].As<Napi::Array>();
    auto outArr = info[2].As<Napi::Array>();
    std::vector<at::Tensor> inputs;
    for (uint32_t i = 0; i < inArr.Length(); ++i) inputs.push_back(tensorArg(inArr.Get(i), "checkpoint input"));
    std::shared_ptr<CheckpointNode> node(new CheckpointNode(), torch::autograd::deleteNode);
    node->segment = segment;
    node->set_next_edges(torch::autograd::collect_next_edges(inputs));
    for (auto& x : inputs) {
      node->saved.push_back(x.detach());
      node->needsGrad.push_back(x.requires_grad());
    }
    auto result = Napi::Array::New(info.Env(), outArr.Length());
    for (uint32_t i = 0; i < outArr.Length(); ++i) {
      at::Tensor o = tensorArg(outArr.Get(i), "checkpoint output");
      if (o.requires_grad()) throw std::runtime_error("checkpointAttach: outputs must come from a no-grad forward");
      bool aliasesInput = o.is_view();
      for (auto& x : inputs) aliasesInput = aliasesInput || o.unsafeGetTensorImpl() == x.unsafeGetTensorImpl();
      {
        at::NoGradGuard noGrad;
        // a fresh tensor, so the history set here is on nothing else's impl
        o = aliasesInput ? o.clone() : o.detach();
      }
      if (o.is_view()) o = o.clone();  // detach() makes a view-free alias in 1.13, but be sure
      torch::autograd::create_gradient_edge(o, node);
      result.Set(i, tensorValue(info.Env(), o));
    }
    return result.As<Napi::Value>();
  });
}

// checkpointDead() -> segments whose graph was freed before their backward ran.
ATELIER_ENTRY(CheckpointDead) {
  std::vector<uint32_t> dead;
  {
    std::lock_guard<std::mutex> lock(deadMutex);
    dead.swap(deadSegments);
  }
  auto arr = Napi::Array::New(info.Env(), dead.size());
  for (size_t i = 0; i < dead.size(); ++i) arr.Set(i, Napi::Number::New(info.Env(), dead[i]));
  return arr;
}

}  // namespace

void registerCheckpoint(Napi::Env env, Napi::Object exports) {
  exports.Set("checkpointSetBackward", Napi::Function::New(env, CheckpointSetBackward, "checkpointSetBackward"));
  exports.Set("checkpointAttach", Napi::Function::New(env, CheckpointAttach, "checkpointAttach"));
  exports.Set("checkpointDead", Napi::Function::New(env, CheckpointDead, "checkpointDead"));
}

}  // namespace atelier
