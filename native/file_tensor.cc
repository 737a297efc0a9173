// Tensors read from a file region (the data of a safetensors tensor), by one
// of three ways (bench/load.ts measures them, bench/RESULTS.md "bench/load"):
//   map   (0) a private copy-on-write mapping of the region, pre-faulted with
//             MADV_POPULATE_READ; the tensor's storage is the page cache until
//             written, and the deleter unmaps it. No copy, no fresh memory to
//             zero-fill: on these VMs a fresh anonymous page costs ~14 µs.
//   read  (1) pread into a fresh at::empty tensor (owned memory).
//   copy  (2) memcpy from a MADV_SEQUENTIAL mapping into a fresh tensor.
// `map` falls back to `read` where a mapping cannot serve: a region not
// aligned to its element size, mmap refused (a filesystem without mmap, the
// vm.max_map_count limit), or a kernel without MADV_POPULATE_READ (< 5.14).
// The reference reader maps files the same way (huggingface/safetensors
// bindings/python/src/lib.rs: torch UntypedStorage.from_file, shared=False).
#include "common.h"

#include <cerrno>
#include <csignal>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

namespace atelier {

namespace {

// Smaller tensors are read: a mapping each would spend a VMA (vm.max_map_count,
// 65530 by default) on a few pages, where a copy costs next to nothing.
constexpr size_t kMapMin = 64 << 10;

std::atomic<int64_t> liveMaps{0};

// A mapped file truncated (or rewritten through O_TRUNC) by another process
// while its tensors live raises SIGBUS on the next touch of a lost page. That
// cannot be turned into an exception; say why before the process dies, then
// let the previous handler (or the default action) take the repeated fault.
struct sigaction previousBus;
std::atomic<bool> busInstalled{false};

void onBus(int sig, siginfo_t* si, void* ctx) {
  if (liveMaps.load() > 0 && si->si_code == BUS_ADRERR) {
    static const char msg[] =
        "atelier: SIGBUS reading a memory-mapped file. Tensors loaded from .safetensors files are mapped from "
        "the file; one was truncated or rewritten in place while they were in use. Replace loaded files "
        "atomically (write a new file, then rename it over the old one), as Atelier's own saves do.\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
  }
  sigaction(SIGBUS, &previousBus, nullptr);  // the faulting access repeats under it
}

void installBusHandler() {
  bool expected = false;
  if (!busInstalled.compare_exchange_strong(expected, true)) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = onBus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &previousBus);
}

std::string errnoText(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

void preadExactly(int fd, uint8_t* into, size_t bytes, int64_t offset) {
  size_t done = 0;
  while (done < bytes) {
    size_t want = std::min<size_t>(bytes - done, size_t(1) << 30);
    ssize_t n = pread(fd, into + done, want, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(errnoText("read failed"));
    if (n == 0) {
      throw std::runtime_error("unexpected end of file after " + std::to_string(done) + " of " +
                               std::to_string(bytes) + " bytes");
    }
    done += static_cast<size_t>(n);
  }
}

struct Region {
  uint8_t* base;  // page-aligned start of the mapping
  size_t length;  // mapped bytes, whole pages
  uint8_t* data;  // the tensor's first byte
};

// Maps [offset, offset + bytes) privately; base == nullptr when mmap refuses.
Region mapRegion(int fd, int64_t offset, size_t bytes, int prot) {
  static const int64_t page = sysconf(_SC_PAGESIZE);
  int64_t start = offset / page * page;
  size_t length = static_cast<size_t>(offset - start) + bytes;
  void* m = mmap(nullptr, length, prot, MAP_PRIVATE, fd, static_cast<off_t>(start));
  if (m == MAP_FAILED) return {nullptr, 0, nullptr};
  auto* base = static_cast<uint8_t*>(m);
  return {base, length, base + (offset - start)};
}

// The mapping's pages, faulted in now. MADV_POPULATE_READ reports a page past
// the end of the file as EFAULT instead of raising SIGBUS, so a file cut short
// since it was opened fails here, as an error.
at::Tensor mapped(int fd, int64_t offset, size_t bytes, c10::IntArrayRef shape, at::ScalarType dtype) {
  Region r = mapRegion(fd, offset, bytes, PROT_READ | PROT_WRITE);
  if (!r.base) return at::Tensor();
  madvise(r.base, r.length, MADV_WILLNEED);  // readahead of the whole region when the cache is cold
  if (madvise(r.base, r.length, MADV_POPULATE_READ) != 0) {
    int err = errno;
    munmap(r.base, r.length);
    if (err == EINVAL) return at::Tensor();  // older kernel: read instead
    if (err == EFAULT) {
      throw std::runtime_error("unexpected end of file: the file is shorter than when it was opened (truncated while "
                               "being read?)");
    }
    errno = err;
    throw std::runtime_error(errnoText("reading the mapped file failed"));
  }
  installBusHandler();
  ++liveMaps;
  uint8_t* base = r.base;
  size_t length = r.length;
  return at::from_blob(
      r.data, shape,
      [base, length](void*) {
        munmap(base, length);
        --liveMaps;
      },
      at::TensorOptions().dtype(dtype));
}

at::Tensor copiedFromMap(int fd, int64_t offset, size_t bytes, c10::IntArrayRef shape, at::ScalarType dtype) {
  Region r = mapRegion(fd, offset, bytes, PROT_READ);
  if (!r.base) throw std::runtime_error(errnoText("mmap failed"));
  madvise(r.base, r.length, MADV_SEQUENTIAL);
  madvise(r.base, r.length, MADV_WILLNEED);
  at::Tensor t;
  try {
    // Probe first: a page past the end of the file must not be touched (SIGBUS).
    if (madvise(r.base, r.length, MADV_POPULATE_READ) != 0 && errno == EFAULT) {
      throw std::runtime_error("unexpected end of file: the file is shorter than when it was opened");
    }
    t = at::empty(shape, at::TensorOptions().dtype(dtype));
    std::memcpy(t.data_ptr(), r.data, bytes);
  } catch (...) {
    munmap(r.base, r.length);
    throw;
  }
  munmap(r.base, r.length);
  return t;
}

// readFileTensor(fd, offset, byteLength, shape, dtypeCode, how) -> tensor id.
// `how`: 0 map, 1 read, 2 copy (see the top of the file).
ATELIER_ENTRY(ReadFileTensor) {
  return guarded(info, [&] {
    int fd = info[0].As<Napi::Number>().Int32Value();
    double off = info[1].As<Napi::Number>().DoubleValue();
    double len = info[2].As<Napi::Number>().DoubleValue();
    auto shape = intList(info[3], "readFileTensor shape");
    auto dtype = static_cast<at::ScalarType>(info[4].As<Napi::Number>().Int32Value());
    int how = info[5].As<Napi::Number>().Int32Value();
    if (!(off >= 0 && len >= 0 && off + len <= 9007199254740991.0)) {
      throw std::runtime_error("readFileTensor: bad offset or length");
    }
    auto offset = static_cast<int64_t>(off);
    auto bytes = static_cast<size_t>(len);
    size_t elem = c10::elementSize(dtype);
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    if (static_cast<size_t>(numel) * elem != bytes) {
      throw std::runtime_error("readFileTensor: " + std::to_string(bytes) + " bytes for shape " + c10::str(shape) +
                               " of " + std::string(c10::toString(dtype)));
    }
    at::Tensor t;
    if (bytes > 0 && how == 2) t = copiedFromMap(fd, offset, bytes, shape, dtype);
    if (how == 0 && bytes >= kMapMin && offset % static_cast<int64_t>(elem) == 0) t = mapped(fd, offset, bytes, shape, dtype);
    if (!t.defined()) {
      t = at::empty(shape, at::TensorOptions().dtype(dtype));
      if (bytes > 0) preadExactly(fd, static_cast<uint8_t*>(t.data_ptr()), bytes, offset);
    }
    return tensorValue(info.Env(), t);
  });
}

ATELIER_ENTRY(LiveMappings) { return Napi::Number::New(info.Env(), static_cast<double>(liveMaps.load())); }

}  // namespace

void registerFileTensor(Napi::Env env, Napi::Object exports) {
  exports.Set("readFileTensor", Napi::Function::New(env, ReadFileTensor, "readFileTensor"));
  exports.Set("liveMappings", Napi::Function::New(env, LiveMappings, "liveMappings"));
}

}  // namespace atelier
