// Entry point of the Atelier addon: registers each group of functions.
#include "common.h"

namespace atelier {

void registerCheckpoint(Napi::Env env, Napi::Object exports);  // native/checkpoint.cc

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  registerTensorStore(env, exports);
  registerOps(env, exports);
  registerAutograd(env, exports);
  registerRuntime(env, exports);
  registerFileTensor(env, exports);
  registerCheckpoint(env, exports);
  return exports;
}

}  // namespace atelier

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return atelier::Init(env, exports); }

NODE_API_MODULE(atelier_native, InitAddon)
