// Large fresh outputs: the first write to each 4 KiB page of a new allocation
// costs a page fault, which takes longer than writing the values (measured:
// allocating and zeroing 51 MB, 33 ms; zeroing it again, 8 ms). Allocations
// past glibc's mmap threshold get fresh pages on every call, so every
// convolution output of a large image or weight gradient of a locally
// connected layer pays this. Where the kernel allows it (Linux, transparent
// huge pages in "madvise" or "always" mode), asking for 2 MiB pages cuts the
// faults 512-fold (the same 51 MB: 14 ms).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace cnnkit::cpu {

inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  auto t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = begin + t.nbytes();
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = end & ~(kHugePage - 1);
  if (t.nbytes() >= 4 * kHugePage && last > first) {
    // Advice only: a kernel without THP ignores it and plain pages serve.
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace cnnkit::cpu
