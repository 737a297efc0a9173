// Shared declarations of the Atelier addon. See native/README.md for the design.
#pragma once

#include <napi.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

namespace atelier {

// Tensors live in a table on the C++ side; JavaScript holds their integer ids.
// Passing and returning numbers is the cheapest thing N-API does, and an
// explicit table makes ownership and the live count exact (docs/design.md §1).
class TensorStore {
 public:
  uint32_t put(at::Tensor t);
  const at::Tensor& get(uint32_t id) const;
  void release(uint32_t id);
  int64_t live() const { return live_; }

 private:
  std::vector<at::Tensor> slots_;
  std::vector<uint32_t> free_;
  int64_t live_ = 0;
};

TensorStore& store();

// Tensor id <-> JS value. Undefined tensors (an unused gradient, an optional
// output) travel as null.
at::Tensor tensorArg(const Napi::Value& v, const char* what);
Napi::Value tensorValue(Napi::Env env, const at::Tensor& t);

// Generators live in a second, smaller table.
at::Generator& generatorArg(const Napi::Value& v);

c10::Device parseDevice(const std::string& s);
std::vector<int64_t> intList(const Napi::Value& v, const char* what);

// Every entry point runs inside this guard: an uncaught c10::Error would abort
// Node, so torch's message becomes a JS Error instead.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Napi::Error::New(info.Env(), e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

#define ATELIER_ENTRY(name) Napi::Value name(const Napi::CallbackInfo& info)

void registerTensorStore(Napi::Env env, Napi::Object exports);
void registerOps(Napi::Env env, Napi::Object exports);
void registerAutograd(Napi::Env env, Napi::Object exports);
void registerRuntime(Napi::Env env, Napi::Object exports);
void registerFileTensor(Napi::Env env, Napi::Object exports);

}  // namespace atelier
