// The tensor table, and moving bytes between JS buffers and tensors.
#include "common.h"

#include <cstring>

namespace atelier {

TensorStore& store() {
  static TensorStore s;
  return s;
}

uint32_t TensorStore::put(at::Tensor t) {
  uint32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
    slots_[id] = std::move(t);
  } else {
    id = static_cast<uint32_t>(slots_.size());
    slots_.push_back(std::move(t));
  }
  ++live_;
  return id;
}

const at::Tensor& TensorStore::get(uint32_t id) const {
  if (id >= slots_.size() || !slots_[id].defined()) {
    throw std::runtime_error("use of a disposed tensor (id " + std::to_string(id) + ")");
  }
  return slots_[id];
}

void TensorStore::release(uint32_t id) {
  if (id >= slots_.size() || !slots_[id].defined()) {
    throw std::runtime_error("tensor disposed twice (id " + std::to_string(id) + ")");
  }
  slots_[id] = at::Tensor();
  free_.push_back(id);
  --live_;
}

at::Tensor tensorArg(const Napi::Value& v, const char* what) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
  if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d))) {
    throw std::runtime_error(std::string(what) + ": expected a tensor");
  }
  return store().get(static_cast<uint32_t>(d));
}

Napi::Value tensorValue(Napi::Env env, const at::Tensor& t) {
  if (!t.defined()) return env.Null();
  return Napi::Number::New(env, store().put(t));
}

std::vector<int64_t> intList(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw std::runtime_error(std::string(what) + ": expected an array of integers");
  auto arr = v.As<Napi::Array>();
  std::vector<int64_t> out(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value e = arr.Get(i);
    if (!e.IsNumber()) throw std::runtime_error(std::string(what) + ": expected an array of integers");
    double d = e.As<Napi::Number>().DoubleValue();
    if (d != static_cast<double>(static_cast<int64_t>(d))) {
      throw std::runtime_error(std::string(what) + ": " + std::to_string(d) + " is not an integer");
    }
    out[i] = static_cast<int64_t>(d);
  }
  return out;
}

c10::Device parseDevice(const std::string& s) { return c10::Device(s); }

namespace {

ATELIER_ENTRY(Free) {
  return guarded(info, [&] {
    store().release(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  });
}

// A second handle to the same tensor (same storage, same autograd identity).
ATELIER_ENTRY(Alias) {
  return guarded(info, [&] { return tensorValue(info.Env(), tensorArg(info[0], "alias")); });
}

ATELIER_ENTRY(LiveCount) { return Napi::Number::New(info.Env(), static_cast<double>(store().live())); }

// fromData(typedArray, shape, dtypeCode): a new CPU tensor holding a copy of
// the bytes. Copying keeps JS and torch lifetimes independent.
ATELIER_ENTRY(FromData) {
  return guarded(info, [&] {
    auto view = info[0].As<Napi::TypedArray>();
    auto shape = intList(info[1], "fromData shape");
    auto dtype = static_cast<c10::ScalarType>(info[2].As<Napi::Number>().Int32Value());
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype));
    size_t bytes = t.numel() * t.element_size();
    if (bytes != view.ByteLength()) {
      throw std::runtime_error("fromData: " + std::to_string(view.ByteLength()) + " bytes given for shape " +
                               c10::str(t.sizes()) + " of " + std::string(c10::toString(dtype)) + " (" +
                               std::to_string(bytes) + " bytes)");
    }
    if (bytes) {
      auto* src = static_cast<uint8_t*>(view.ArrayBuffer().Data()) + view.ByteOffset();
      std::memcpy(t.data_ptr(), src, bytes);
    }
    return tensorValue(info.Env(), t);
  });
}

// dataView(id): an ArrayBuffer over the tensor's own memory (zero-copy). The
// buffer holds a reference to the storage, so it stays valid after dispose.
// The tensor must be a contiguous CPU tensor; the JS side arranges that.
ATELIER_ENTRY(DataView) {
  return guarded(info, [&] {
    at::Tensor t = tensorArg(info[0], "dataView");
    if (!t.device().is_cpu() || !t.is_contiguous()) {
      throw std::runtime_error("dataView: tensor must be contiguous and on the CPU");
    }
    size_t bytes = t.numel() * t.element_size();
    if (bytes == 0) return Napi::ArrayBuffer::New(info.Env(), 0).As<Napi::Value>();
    auto* holder = new at::Tensor(t);
    return Napi::ArrayBuffer::New(info.Env(), t.data_ptr(), bytes,
                                  [](Napi::Env, void*, at::Tensor* h) { delete h; }, holder)
        .As<Napi::Value>();
  });
}

// releaseView(arrayBuffer): detaches a dataView() buffer, dropping its
// reference to the storage at once. Without it, a disposed tensor's memory
// stays alive until V8 happens to collect the buffer, and V8 does not know
// how large it is (bench/models: 2.2 GiB held after dispose()).
ATELIER_ENTRY(ReleaseView) {
  return guarded(info, [&] {
    if (!info[0].IsArrayBuffer()) throw std::runtime_error("releaseView: expected an ArrayBuffer");
    napi_status st = napi_detach_arraybuffer(info.Env(), info[0]);
    if (st != napi_ok) throw std::runtime_error("releaseView: the buffer cannot be detached");
    return info.Env().Undefined();
  });
}

// meta(id) -> [dtypeCode, shape[], device, requiresGrad, contiguous]: one call for what
// a JS Tensor shows, so that printing and checks cost one crossing.
ATELIER_ENTRY(Meta) {
  return guarded(info, [&] {
    const at::Tensor& t = store().get(info[0].As<Napi::Number>().Uint32Value());
    Napi::Env env = info.Env();
    auto out = Napi::Array::New(env, 5);
    out.Set(0u, Napi::Number::New(env, static_cast<int>(t.scalar_type())));
    auto sizes = t.sizes();
    auto shape = Napi::Array::New(env, sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) shape.Set(i, Napi::Number::New(env, static_cast<double>(sizes[i])));
    out.Set(1u, shape);
    out.Set(2u, Napi::String::New(env, t.device().str()));
    out.Set(3u, Napi::Boolean::New(env, t.requires_grad()));
    out.Set(4u, Napi::Boolean::New(env, t.is_contiguous()));
    return out.As<Napi::Value>();
  });
}

ATELIER_ENTRY(Shape) {
  return guarded(info, [&] {
    const at::Tensor& t = store().get(info[0].As<Napi::Number>().Uint32Value());
    auto sizes = t.sizes();
    auto shape = Napi::Array::New(info.Env(), sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) shape.Set(i, Napi::Number::New(info.Env(), static_cast<double>(sizes[i])));
    return shape.As<Napi::Value>();
  });
}

ATELIER_ENTRY(Dtype) {
  return guarded(info, [&] {
    const at::Tensor& t = store().get(info[0].As<Napi::Number>().Uint32Value());
    return Napi::Number::New(info.Env(), static_cast<int>(t.scalar_type())).As<Napi::Value>();
  });
}

ATELIER_ENTRY(Item) {
  return guarded(info, [&] {
    const at::Tensor& t = store().get(info[0].As<Napi::Number>().Uint32Value());
    if (t.numel() != 1) {
      throw std::runtime_error("item: tensor of shape " + c10::str(t.sizes()) + " has " +
                               std::to_string(t.numel()) + " elements, not 1");
    }
    at::Scalar s = t.item();
    if (s.isBoolean()) return Napi::Boolean::New(info.Env(), s.toBool()).As<Napi::Value>();
    if (s.isIntegral(false)) return Napi::Number::New(info.Env(), static_cast<double>(s.toLong())).As<Napi::Value>();
    return Napi::Number::New(info.Env(), s.toDouble()).As<Napi::Value>();
  });
}

}  // namespace

void registerTensorStore(Napi::Env env, Napi::Object exports) {
  exports.Set("free", Napi::Function::New(env, Free, "free"));
  exports.Set("alias", Napi::Function::New(env, Alias, "alias"));
  exports.Set("liveCount", Napi::Function::New(env, LiveCount, "liveCount"));
  exports.Set("fromData", Napi::Function::New(env, FromData, "fromData"));
  exports.Set("dataView", Napi::Function::New(env, DataView, "dataView"));
  exports.Set("releaseView", Napi::Function::New(env, ReleaseView, "releaseView"));
  exports.Set("meta", Napi::Function::New(env, Meta, "meta"));
  exports.Set("shape", Napi::Function::New(env, Shape, "shape"));
  exports.Set("dtype", Napi::Function::New(env, Dtype, "dtype"));
  exports.Set("item", Napi::Function::New(env, Item, "item"));
}

}  // namespace atelier
