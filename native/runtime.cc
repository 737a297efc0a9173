// Process-wide state: version, threads, devices, random generators, autocast.
#include "common.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/version.h>

#include <malloc.h>

namespace atelier {
namespace {

std::vector<c10::optional<at::Generator>>& generators() {
  static std::vector<c10::optional<at::Generator>> g;
  return g;
}

ATELIER_ENTRY(Version) { return Napi::String::New(info.Env(), TORCH_VERSION); }

ATELIER_ENTRY(SetNumThreads) {
  return guarded(info, [&] {
    at::set_num_threads(info[0].As<Napi::Number>().Int32Value());
    return info.Env().Undefined();
  });
}

ATELIER_ENTRY(GetNumThreads) { return Napi::Number::New(info.Env(), at::get_num_threads()); }

// Gives the heap's free pages back to the kernel (glibc malloc_trim(0) also releases whole free
// pages inside the heap, not only at its top). The mallopt below keeps freed blocks in the heap so
// that steps do not page-fault their activations back in; memory freed once for good (float32
// weights replaced by their bf16 copies under weight_dtype) would otherwise stay resident.
ATELIER_ENTRY(MallocTrim) { return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0); }

ATELIER_ENTRY(CudaDeviceCount) {
  return guarded(info, [&] {
    int n = at::hasCUDA() ? at::detail::getCUDAHooks().getNumGPUs() : 0;
    return Napi::Number::New(info.Env(), n).As<Napi::Value>();
  });
}

// manualSeed(seed): seeds the default generators of every device, as
// torch.manual_seed does.
ATELIER_ENTRY(ManualSeed) {
  return guarded(info, [&] {
    uint64_t seed = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    at::manual_seed(seed);
    return info.Env().Undefined();
  });
}

// generatorNew(device, seed) -> id: a private generator for `device`, a clone
// of that device's default one with its own seed (torch.Generator(device)).
ATELIER_ENTRY(GeneratorNew) {
  return guarded(info, [&] {
    c10::Device device = parseDevice(info[0].As<Napi::String>().Utf8Value());
    uint64_t seed = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    at::Generator gen = device.is_cpu() ? at::detail::createCPUGenerator(seed)
                                        : at::globalContext().defaultGenerator(device).clone();
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_current_seed(seed);
    }
    generators().emplace_back(gen);
    return Napi::Number::New(info.Env(), static_cast<double>(generators().size() - 1)).As<Napi::Value>();
  });
}

ATELIER_ENTRY(GeneratorFree) {
  return guarded(info, [&] {
    generatorArg(info[0]);
    generators()[info[0].As<Napi::Number>().Uint32Value()].reset();
    return info.Env().Undefined();
  });
}

ATELIER_ENTRY(GeneratorSeed) {
  return guarded(info, [&] {
    at::Generator& gen = generatorArg(info[0]);
    uint64_t seed = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
    return info.Env().Undefined();
  });
}

// generatorGetState(id) -> tensor id (uint8 bytes), as Generator.get_state().
ATELIER_ENTRY(GeneratorGetState) {
  return guarded(info, [&] {
    at::Generator& gen = generatorArg(info[0]);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return tensorValue(info.Env(), gen.get_state());
  });
}

ATELIER_ENTRY(GeneratorSetState) {
  return guarded(info, [&] {
    at::Generator& gen = generatorArg(info[0]);
    at::Tensor state = tensorArg(info[1], "generatorSetState");
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
    return info.Env().Undefined();
  });
}

// The default CPU generator's state, for saving and resuming training.
ATELIER_ENTRY(DefaultGeneratorGetState) {
  return guarded(info, [&] {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    return tensorValue(info.Env(), gen.get_state());
  });
}

ATELIER_ENTRY(DefaultGeneratorSetState) {
  return guarded(info, [&] {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    at::Tensor state = tensorArg(info[0], "defaultGeneratorSetState");
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
    return info.Env().Undefined();
  });
}

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool autocastEnabled(bool cuda) { return at::autocast::is_autocast_enabled(cuda ? at::kCUDA : at::kCPU); }
at::ScalarType autocastDtype(bool cuda) { return at::autocast::get_autocast_dtype(cuda ? at::kCUDA : at::kCPU); }
void setAutocast(bool cuda, bool on, at::ScalarType dtype) {
  at::autocast::set_autocast_enabled(cuda ? at::kCUDA : at::kCPU, on);
  at::autocast::set_autocast_dtype(cuda ? at::kCUDA : at::kCPU, dtype);
}
#else
bool autocastEnabled(bool cuda) { return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled(); }
at::ScalarType autocastDtype(bool cuda) {
  return cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void setAutocast(bool cuda, bool on, at::ScalarType dtype) {
  if (cuda) {
    at::autocast::set_enabled(on);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(on);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
}
#endif

// autocastEnter(deviceType, dtypeCode) -> [wasEnabled, previousDtype]
ATELIER_ENTRY(AutocastEnter) {
  return guarded(info, [&] {
    bool cuda = info[0].As<Napi::String>().Utf8Value() == "cuda";
    auto dtype = static_cast<at::ScalarType>(info[1].As<Napi::Number>().Int32Value());
    auto prev = Napi::Array::New(info.Env(), 2);
    prev.Set(0u, Napi::Boolean::New(info.Env(), autocastEnabled(cuda)));
    prev.Set(1u, Napi::Number::New(info.Env(), static_cast<int>(autocastDtype(cuda))));
    setAutocast(cuda, true, dtype);
    at::autocast::increment_nesting();
    return prev.As<Napi::Value>();
  });
}

// autocastExit(deviceType, wasEnabled, previousDtype): restores the state, and
// drops the cast-weight cache when the outermost scope ends (as torch.autocast).
ATELIER_ENTRY(AutocastExit) {
  return guarded(info, [&] {
    bool cuda = info[0].As<Napi::String>().Utf8Value() == "cuda";
    bool was = info[1].As<Napi::Boolean>().Value();
    auto dtype = static_cast<at::ScalarType>(info[2].As<Napi::Number>().Int32Value());
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    setAutocast(cuda, was, dtype);
    return info.Env().Undefined();
  });
}

}  // namespace

at::Generator& generatorArg(const Napi::Value& v) {
  if (!v.IsNumber()) throw std::runtime_error("expected a Generator");
  uint32_t id = v.As<Napi::Number>().Uint32Value();
  auto& g = generators();
  if (id >= g.size() || !g[id]) throw std::runtime_error("use of a disposed Generator");
  return *g[id];
}

void registerRuntime(Napi::Env env, Napi::Object exports) {
  // Keep freed tensor memory in the heap instead of returning it to the
  // kernel after every op: glibc's default (mmap for >128 KB blocks) made each
  // training step page-fault its activations back in (bench/engine: conv
  // fwd+bwd 5.5 -> 4.5 ms, 940 -> 0 faults a step). Up to 256 MB stays mapped.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  exports.Set("version", Napi::Function::New(env, Version, "version"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads, "setNumThreads"));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads, "getNumThreads"));
  exports.Set("mallocTrim", Napi::Function::New(env, MallocTrim, "mallocTrim"));
  exports.Set("cudaDeviceCount", Napi::Function::New(env, CudaDeviceCount, "cudaDeviceCount"));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed, "manualSeed"));
  exports.Set("generatorNew", Napi::Function::New(env, GeneratorNew, "generatorNew"));
  exports.Set("generatorFree", Napi::Function::New(env, GeneratorFree, "generatorFree"));
  exports.Set("generatorSeed", Napi::Function::New(env, GeneratorSeed, "generatorSeed"));
  exports.Set("generatorGetState", Napi::Function::New(env, GeneratorGetState, "generatorGetState"));
  exports.Set("generatorSetState", Napi::Function::New(env, GeneratorSetState, "generatorSetState"));
  exports.Set("defaultGeneratorGetState", Napi::Function::New(env, DefaultGeneratorGetState, "defaultGeneratorGetState"));
  exports.Set("defaultGeneratorSetState", Napi::Function::New(env, DefaultGeneratorSetState, "defaultGeneratorSetState"));
  exports.Set("autocastEnter", Napi::Function::New(env, AutocastEnter, "autocastEnter"));
  exports.Set("autocastExit", Napi::Function::New(env, AutocastExit, "autocastExit"));
}

}  // namespace atelier
