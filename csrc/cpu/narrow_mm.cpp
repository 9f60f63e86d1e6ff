// The streamed narrow products of narrow_mm.h. Register tiles: MR rows by NV
// (or CV) vectors of accumulators; the broadcast operand is one scalar per
// row, read from memory into all lanes.
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

// Tasks of at least about GRAIN_SIZE multiply-adds; smaller products run inline.
inline int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_task));
}

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
  for (auto& row : acc) {
    for (auto& v : row) v = Vec(T(0));
  }
  for (int64_t k = 0; k < l; ++k) {
    Vec bk[NV];
    for (int v = 0; v + 1 < NV; ++v) bk[v] = Vec::loadu(b + k * ldb + v * kLanes);
    bk[NV - 1] = Vec::loadu(b + k * ldb + (NV - 1) * kLanes, last);
    for (int r = 0; r < MR; ++r) {
      const Vec ark(a[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ark, bk[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) {
      T* cv = c + r * ldc + v * kLanes;
      const int64_t lanes = v + 1 < NV ? kLanes : last;
      acc[r][v].store(cv, lanes);
    }
  }
}

// One tile of MR rows against every column: columns in blocks of up to four
// vectors (a second block re-reads the tile's A rows from cache).
template <typename T, int MR>
void right_rows(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t l,
                int64_t n) {
  constexpr int64_t kLanes = Vectorized<T>::size();
  for (int64_t j = 0; j < n; j += 4 * kLanes) {
    const int64_t width = std::min(n - j, 4 * kLanes), vectors = ceil_div(width, kLanes);
    const int64_t last = width - (vectors - 1) * kLanes;
    switch (vectors) {
      case 1: right_tile<T, MR, 1>(a, lda, b + j, ldb, c + j, ldc, l, last); break;
      case 2: right_tile<T, MR, 2>(a, lda, b + j, ldb, c + j, ldc, l, last); break;
      case 3: right_tile<T, MR, 3>(a, lda, b + j, ldb, c + j, ldc, l, last); break;
      default: right_tile<T, MR, 4>(a, lda, b + j, ldb, c + j, ldc, l, last);
    }
  }
}

// C (m x n) = A (m x l) @ B (l x n): tiles of 4 rows, split over the threads.
template <typename T>
void narrow_right(const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, int64_t m,
                  int64_t l, int64_t n) {
  constexpr int MR = 4;
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

// C[j, x0:x1] += sum over r < MR of B[j][r] * A[r, x0:x1] for every j < n,
// with B[j][r] at b[j * bs_j + r * bs_i] and row r of A at a + r * lda. The
// MR rows of A (a piece of each) stay in L1 while every row of C takes them.
template <typename T, int MR>
void left_rows(const T* b, int64_t bs_j, int64_t bs_i, const T* a, int64_t lda, T* c,
               int64_t ldc, int64_t n, int64_t x0, int64_t x1) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  for (int64_t j = 0; j < n; ++j) {
    Vec coef[MR];
    for (int r = 0; r < MR; ++r) coef[r] = Vec(b[j * bs_j + r * bs_i]);
    T* cj = c + j * ldc;
    int64_t x = x0;
    for (; x + kLanes <= x1; x += kLanes) {
      Vec sum = Vec::loadu(cj + x);
      for (int r = 0; r < MR; ++r) sum = at::vec::fmadd(coef[r], Vec::loadu(a + r * lda + x), sum);
      sum.store(cj + x);
    }
    if (x < x1) {
      const int64_t rest = x1 - x;
      Vec sum = Vec::loadu(cj + x, rest);
      for (int r = 0; r < MR; ++r) {
        sum = at::vec::fmadd(coef[r], Vec::loadu(a + r * lda + x, rest), sum);
      }
      sum.store(cj + x, rest);
    }
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
  const int64_t width =
      std::max<int64_t>(kLanes, kChunkBytes / int64_t(sizeof(T)) / n / kLanes * kLanes);
  at::parallel_for(0, ceil_div(l, width), grain_for(n * m * width), [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t x0 = h * width, x1 = std::min(l, x0 + width);
      for (int64_t j = 0; j < n; ++j) std::fill(c + j * ldc + x0, c + j * ldc + x1, T(0));
      int64_t i = 0;
      for (; i + 4 <= m; i += 4) {
        left_rows<T, 4>(b + i * bs_i, bs_j, bs_i, a + i * lda, lda, c, ldc, n, x0, x1);
      }
      for (; i < m; ++i) {
        left_rows<T, 1>(b + i * bs_i, bs_j, bs_i, a + i * lda, lda, c, ldc, n, x0, x1);
      }
    }
  });
}

// ------------------------------------------------ narrow inner: C = D @ E, E (n x l)

// C rows [0, MR), CV vectors from column x (the last `last` lanes wide):
// sum over j of D[r][j] * E[j, ...], D[r][j] at d[r * ds_i + j * ds_j].
template <typename T, int MR, int CV>
void inner_tile(const T* d, int64_t ds_i, int64_t ds_j, const T* e, int64_t lde, T* c,
                int64_t ldc, int64_t n, int64_t last) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  Vec acc[MR][CV];
  for (auto& row : acc) {
    for (auto& v : row) v = Vec(T(0));
  }
  for (int64_t j = 0; j < n; ++j) {
    Vec ej[CV];
    for (int v = 0; v + 1 < CV; ++v) ej[v] = Vec::loadu(e + j * lde + v * kLanes);
    ej[CV - 1] = Vec::loadu(e + j * lde + (CV - 1) * kLanes, last);
    for (int r = 0; r < MR; ++r) {
      const Vec drj(d[r * ds_i + j * ds_j]);
      for (int v = 0; v < CV; ++v) acc[r][v] = at::vec::fmadd(drj, ej[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < CV; ++v) {
      T* cv = c + r * ldc + v * kLanes;
      const int64_t lanes = v + 1 < CV ? kLanes : last;
      acc[r][v].store(cv, lanes);
    }
  }
}

// MR rows of C, left to right: blocks of four vectors, then one vector at a time.
template <typename T, int MR>
void inner_rows(const T* d, int64_t ds_i, int64_t ds_j, const T* e, int64_t lde, T* c,
                int64_t ldc, int64_t n, int64_t l) {
  constexpr int64_t kLanes = Vectorized<T>::size();
  int64_t x = 0;
  for (; x + 4 * kLanes <= l; x += 4 * kLanes) {
    inner_tile<T, MR, 4>(d, ds_i, ds_j, e + x, lde, c + x, ldc, n, kLanes);
  }
  for (; x < l; x += kLanes) {
    inner_tile<T, MR, 1>(d, ds_i, ds_j, e + x, lde, c + x, ldc, n, std::min(kLanes, l - x));
  }
}

// C (m x l) = D (m x n) @ E (n x l): C written once, in tiles of 4 rows split
// over the threads; E is read from cache for every tile.
template <typename T>
void narrow_inner(const T* d, int64_t ds_i, int64_t ds_j, const T* e, int64_t lde, T* c,
                  int64_t ldc, int64_t m, int64_t n, int64_t l) {
  constexpr int MR = 4;
  at::parallel_for(0, ceil_div(m, MR), grain_for(MR * l * n), [&](int64_t t0, int64_t t1) {
    for (int64_t r = t0 * MR; r < std::min(m, t1 * MR);) {
      if (r + MR <= m) {
        inner_rows<T, MR>(d + r * ds_i, ds_i, ds_j, e, lde, c + r * ldc, ldc, n, l);
        r += MR;
      } else {
        inner_rows<T, 1>(d + r * ds_i, ds_i, ds_j, e, lde, c + r * ldc, ldc, n, l);
        r += 1;
      }
    }
  });
}

}  // namespace

bool narrow_mm(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = dst.size(1), cols = dst.size(2), inner = a.size(2);
  if (dst.stride(2) != 1 || dst.numel() == 0) return false;
  // One dimension narrow, both others wide: the products that stream one
  // large matrix. (With two narrow dimensions the product is small; with
  // none, BLAS's blocking is what it needs.)
  auto only_narrow = [](int64_t x, int64_t y, int64_t z) {
    return x <= kNarrow && y > kNarrow && z > kNarrow;
  };
  enum class Form { kRight, kLeft, kInner };
  Form form;
  if (only_narrow(cols, rows, inner) && a.stride(2) == 1 && b.stride(2) == 1) {
    form = Form::kRight;
  } else if (only_narrow(rows, cols, inner) && b.stride(2) == 1) {
    form = Form::kLeft;
  } else if (only_narrow(inner, rows, cols)) {
    form = Form::kInner;
  } else {
    return false;
  }
  // The inner form reads rows of E = b; a transposed view is copied (n x l,
  // small next to the m x l result).
  const auto e = form == Form::kInner ? b.contiguous() : b;
  AT_DISPATCH_FLOATING_TYPES(dst.scalar_type(), "cnnkit_narrow_mm", [&] {
    for (int64_t g = 0; g < dst.size(0); ++g) {
      scalar_t* c = dst.select(0, g).mutable_data_ptr<scalar_t>();
      const scalar_t* pa = a.select(0, g).const_data_ptr<scalar_t>();
      const scalar_t* pb = e.select(0, g).const_data_ptr<scalar_t>();
      switch (form) {
        case Form::kRight:
          narrow_right(pa, a.stride(1), pb, e.stride(1), c, dst.stride(1), rows, inner, cols);
          break;
        case Form::kLeft:
          narrow_left(pa, a.stride(1), a.stride(2), pb, e.stride(1), c, dst.stride(1), rows,
                      inner, cols);
          break;
        case Form::kInner:
          narrow_inner(pa, a.stride(1), a.stride(2), pb, e.stride(1), c, dst.stride(1), rows,
                       inner, cols);
          break;
      }
    }
  });
  return true;
}

}  // namespace cnnkit::cpu
