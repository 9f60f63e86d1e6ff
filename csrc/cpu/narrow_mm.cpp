// The streamed narrow products of narrow_mm.h, on ATen's Vectorized: register
// tiles of MR rows by NV vectors of accumulators (narrow right) or JR rows of
// C by MR rows of A (narrow left).
#include "cpu/narrow_mm.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "cpu/im2col.h"

namespace cnnkit::cpu {
namespace {

using at::vec::Vectorized;

// Loops over a register tile, fully unrolled: GCC keeps the tile in registers
// only if its loops are unrolled before it looks for that (without this it
// stored all 16 accumulators to the stack at every step).
#define CNNKIT_UNROLL _Pragma("GCC unroll 16")

// ------------------------------------------------ narrow right: C = A @ B, B (l x n)

// Rows [0, MR) of C, columns [0, (NV - 1) * lanes + last): for each k, row k
// of B in NV vector registers (the last vector `last` lanes wide), each A[r][k]
// broadcast against it. A is read in MR concurrent row streams.
template <typename T, int MR, int NV>
void right_tile(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t l,
                int64_t last) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  Vec acc[MR][NV];
  CNNKIT_UNROLL
  for (auto& row : acc) {
    CNNKIT_UNROLL
    for (auto& v : row) v = Vec(T(0));
  }
  for (int64_t k = 0; k < l; ++k) {
    Vec bk[NV];
    CNNKIT_UNROLL
    for (int v = 0; v + 1 < NV; ++v) bk[v] = Vec::loadu(b + k * ldb + v * kLanes);
    bk[NV - 1] = Vec::loadu(b + k * ldb + (NV - 1) * kLanes, last);
    CNNKIT_UNROLL
    for (int r = 0; r < MR; ++r) {
      const Vec ark(a[r * lda + k]);
      CNNKIT_UNROLL
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ark, bk[v], acc[r][v]);
    }
  }
  CNNKIT_UNROLL
  for (int r = 0; r < MR; ++r) {
    CNNKIT_UNROLL
    for (int v = 0; v < NV; ++v) {
      T* cv = c + r * ldc + v * kLanes;
      const int64_t lanes = v + 1 < NV ? kLanes : last;
      acc[r][v].store(cv, lanes);
    }
  }
}

// One tile of MR rows against every column, two vectors of columns at a time
// (one block for every narrow product of float; a second block re-reads the
// tile's rows of A from cache).
template <typename T, int MR>
void right_rows(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t l,
                int64_t n) {
  constexpr int64_t kLanes = Vectorized<T>::size();
  for (int64_t j = 0; j < n; j += 2 * kLanes) {
    const int64_t width = std::min(n - j, 2 * kLanes);
    if (width <= kLanes) {
      right_tile<T, MR, 1>(a, lda, b + j, ldb, c + j, ldc, l, width);
    } else {
      right_tile<T, MR, 2>(a, lda, b + j, ldb, c + j, ldc, l, width - kLanes);
    }
  }
}

// C (m x n) = A (m x l) @ B (l x n): tiles of 8 rows, split over the threads.
// Each accumulator takes one multiply-add per k, which waits for the previous
// one on it (4 cycles): with tiles of 4 rows (4 accumulators for float's up
// to 16 columns) a core did one k per 4 cycles, about half the rate a sum
// streams the weight at; 8 rows (8 concurrent row streams of A) keep twice as
// many multiply-adds in flight (measured on 4x512x7x7 with 4x4 tiles,
// forward: one thread, 27-31 ms before and 17-25 ms after in runs minutes
// apart; two threads, alternating single calls of both, 0.93 of the time).
template <typename T>
void narrow_right(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t m,
                  int64_t l, int64_t n) {
  constexpr int MR = 8;
  at::parallel_for(0, ceil_div(m, MR), grain_for(MR * l * n), [&](int64_t t0, int64_t t1) {
    for (int64_t r = t0 * MR; r < std::min(m, t1 * MR);) {
      if (r + MR <= m) {
        right_rows<T, MR>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, l, n);
        r += MR;
      } else {
        right_rows<T, 1>(a + r * lda, lda, b, ldb, c + r * ldc, ldc, l, n);
        r += 1;
      }
    }
  });
}

// ------------------------------------------------ narrow left: C = B @ A, B (n x m)

// C[j, x0:x1] += sum over r < MR of B[j][r] * A[r, x0:x1] for the JR rows j
// of C at c, with B[j][r] at b[j * bs_j + r * bs_i] and row r of A at
// a + r * lda: the JR x MR coefficients in registers, each vector of A loaded
// once for the JR rows.
template <typename T, int MR, int JR>
void left_tile(const T* b, int64_t bs_j, int64_t bs_i, const T* a, int64_t lda, T* c,
               int64_t ldc, int64_t x0, int64_t x1) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  Vec coef[JR][MR];
  CNNKIT_UNROLL
  for (int j = 0; j < JR; ++j) {
    CNNKIT_UNROLL
    for (int r = 0; r < MR; ++r) coef[j][r] = Vec(b[j * bs_j + r * bs_i]);
  }
  for (int64_t x = x0; x < x1; x += kLanes) {
    const int64_t lanes = std::min(kLanes, x1 - x);
    Vec ar[MR];
    CNNKIT_UNROLL
    for (int r = 0; r < MR; ++r) ar[r] = Vec::loadu(a + r * lda + x, lanes);
    CNNKIT_UNROLL
    for (int j = 0; j < JR; ++j) {
      Vec sum = Vec::loadu(c + j * ldc + x, lanes);
      CNNKIT_UNROLL
      for (int r = 0; r < MR; ++r) sum = at::vec::fmadd(coef[j][r], ar[r], sum);
      sum.store(c + j * ldc + x, lanes);
    }
  }
}

// Every row of C against MR rows of A: blocks of four rows of C.
template <typename T, int MR>
void left_rows(const T* b, int64_t bs_j, int64_t bs_i, const T* a, int64_t lda, T* c,
               int64_t ldc, int64_t n, int64_t x0, int64_t x1) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    left_tile<T, MR, 4>(b + j * bs_j, bs_j, bs_i, a, lda, c + j * ldc, ldc, x0, x1);
  }
  for (; j < n; ++j) {
    left_tile<T, MR, 1>(b + j * bs_j, bs_j, bs_i, a, lda, c + j * ldc, ldc, x0, x1);
  }
}

// C (n x l) = B (n x m) @ A (m x l). The columns are cut into chunks whose
// n x width piece of C fits in L1; a chunk's sums run down all m rows of A,
// four at a time. Threads take whole chunks.
template <typename T>
void narrow_left(const T* b, int64_t bs_j, int64_t bs_i, const T* a, int64_t lda, T* c,
                 int64_t ldc, int64_t n, int64_t m, int64_t l) {
  constexpr int64_t kLanes = Vectorized<T>::size();
  constexpr int64_t kChunkBytes = 24 * 1024;
  constexpr int64_t kLineElements = 64 / sizeof(T);
  const int64_t width =
      std::max<int64_t>(kLanes, kChunkBytes / int64_t(sizeof(T)) / n / kLanes * kLanes);
  at::parallel_for(0, ceil_div(l, width), grain_for(n * m * width), [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t x0 = h * width, x1 = std::min(l, x0 + width);
      for (int64_t j = 0; j < n; ++j) std::fill(c + j * ldc + x0, c + j * ldc + x1, T(0));
      int64_t i = 0;
      for (; i + 4 <= m; i += 4) {
        // The chunk reads a short piece of each row of A, rows far apart,
        // which the hardware prefetchers follow poorly: the pieces of the rows
        // two blocks ahead are requested now (a few percent on 4x512x7x7 with
        // 4x4 tiles).
        for (int64_t r = i + 8; r < std::min(m, i + 12); ++r) {
          for (int64_t x = x0; x < x1; x += kLineElements) __builtin_prefetch(a + r * lda + x);
        }
        left_rows<T, 4>(b + i * bs_i, bs_j, bs_i, a + i * lda, lda, c, ldc, n, x0, x1);
      }
      for (; i < m; ++i) {
        left_rows<T, 1>(b + i * bs_i, bs_j, bs_i, a + i * lda, lda, c, ldc, n, x0, x1);
      }
    }
  });
}

}  // namespace

bool narrow_mm(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = dst.size(1), cols = dst.size(2), inner = a.size(2);
  if (dst.numel() == 0 || dst.stride(2) != 1 || b.stride(2) != 1) return false;
  // One dimension narrow, both others wide: the products that stream one
  // large matrix. (With two narrow dimensions the product is small; with
  // none, the packed product's blocking (gemm.h) is what it needs.)
  auto only_narrow = [](int64_t x, int64_t y, int64_t z) {
    return x <= kNarrow && y > kNarrow && z > kNarrow;
  };
  const bool right = only_narrow(cols, rows, inner) && a.stride(2) == 1;
  const bool left = !right && only_narrow(rows, cols, inner);
  if (!right && !left) return false;
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "cnnkit_narrow_mm", [&] {
    for (int64_t g = 0; g < dst.size(0); ++g) {
      scalar_t* c = dst.select(0, g).mutable_data_ptr<scalar_t>();
      const scalar_t* pa = a.select(0, g).const_data_ptr<scalar_t>();
      const scalar_t* pb = b.select(0, g).const_data_ptr<scalar_t>();
      if (right) {
        narrow_right(pa, a.stride(1), pb, b.stride(1), c, dst.stride(1), rows, inner, cols);
      } else {
        narrow_left(pa, a.stride(1), a.stride(2), pb, b.stride(1), c, dst.stride(1), rows, inner,
                    cols);
      }
    }
  });
  return true;
}

}  // namespace cnnkit::cpu
