// Unfolding one sample's input into the patch matrix of a convolution (im2col)
// and its adjoint, folding a patch matrix back with summation (col2im).
//
// For one sample x of shape (C, H, W) the patch matrix has one row per
// (c, r, s) and one column per output location (p, q):
//
//     col[(c*R + r)*S + s][p*Q + q] = x[c][p*stride_h - pad_h + r*dilation_h]
//                                        [q*stride_w - pad_w + s*dilation_w]
//
// (zero where the index falls in the padding). With rows ordered this way, the
// rows of group g are the contiguous block [g*C/G*R*S, (g+1)*C/G*R*S), so the
// convolution of group g is the matrix product weight_g (K/G x C/G*R*S) @ col_g.
// Rows are `ld` apart (ld >= P*Q), so the patch matrices of several samples can
// sit side by side in one matrix, sample i in columns [i*P*Q, (i+1)*P*Q).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "problem.h"

namespace cnnkit::cpu {

// Output columns q whose input column q*stride - pad + offset lies in [0, W):
// the half-open range [lo, hi), clamped to [0, Q).
struct ValidRange {
  int64_t lo, hi;
};

inline int64_t ceil_div(int64_t a, int64_t b) {
  // b > 0; rounds towards +infinity for negative a too.
  return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

inline ValidRange valid_outputs(int64_t extent, int64_t out_extent, int64_t stride, int64_t pad,
                                int64_t offset) {
  const int64_t lo = std::min(out_extent, std::max<int64_t>(0, ceil_div(pad - offset, stride)));
  const int64_t hi = std::min<int64_t>(out_extent, ceil_div(extent + pad - offset, stride));
  return {lo, std::max(lo, hi)};
}

// Rows worth of work per parallel chunk: about 32K elements.
inline int64_t rows_grain(int64_t row_length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_length));
}

// d[i] = x[i * stride] for i in [0, n). A stride known at compile time lets
// the compiler vectorise the gather with permutes (measured 5x faster per
// element than the same loop with a runtime stride, for stride 2 and 4 on
// 28-element rows); strides 2 to 4 are the ones strided and tiled
// convolutions give (a tile phase's stride is stride * tile).
template <int kStride, typename T>
void gather_strided(T* __restrict d, const T* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = x[i * kStride];
}

template <typename T>
void gather_strided(T* d, const T* x, int64_t n, int64_t stride) {
  switch (stride) {
    case 1: std::memcpy(d, x, sizeof(T) * n); return;
    case 2: gather_strided<2>(d, x, n); return;
    case 3: gather_strided<3>(d, x, n); return;
    case 4: gather_strided<4>(d, x, n); return;
    default:
      for (int64_t i = 0; i < n; ++i) d[i] = x[i * stride];
  }
}

// The inverse: d[i * stride] = x[i] (2x faster per element with the stride
// known at compile time).
template <int kStride, typename T>
void scatter_strided(T* __restrict d, const T* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i * kStride] = x[i];
}

template <typename T>
void scatter_strided(T* d, const T* x, int64_t n, int64_t stride) {
  switch (stride) {
    case 1: std::memcpy(d, x, sizeof(T) * n); return;
    case 2: scatter_strided<2>(d, x, n); return;
    case 3: scatter_strided<3>(d, x, n); return;
    case 4: scatter_strided<4>(d, x, n); return;
    default:
      for (int64_t i = 0; i < n; ++i) d[i * stride] = x[i];
  }
}

// d[i] += x[i * x_stride] for i in [0, n) (restrict: vectorised at stride 1).
template <typename T>
void add_row(T* __restrict d, const T* __restrict x, int64_t n, int64_t x_stride) {
  if (x_stride == 1) {
    for (int64_t i = 0; i < n; ++i) d[i] += x[i];
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] += x[i * x_stride];
  }
}

// Column phases of a row: element w = i*stride + j of a row is entry i of
// phase j. interleave_row writes (or adds) the phases phase[j][i], rows
// `phase_ld` apart, into a row of `width` elements.
template <int kStride, typename T>
void interleave_row(T* __restrict row, const T* __restrict phases, int64_t phase_ld, int64_t width,
                    bool accumulate) {
  const int64_t whole = width / kStride;
  if (accumulate) {
    for (int64_t i = 0; i < whole; ++i) {
      for (int j = 0; j < kStride; ++j) row[i * kStride + j] += phases[j * phase_ld + i];
    }
  } else {
    for (int64_t i = 0; i < whole; ++i) {
      for (int j = 0; j < kStride; ++j) row[i * kStride + j] = phases[j * phase_ld + i];
    }
  }
  for (int64_t w = whole * kStride; w < width; ++w) {
    const T v = phases[(w - whole * kStride) * phase_ld + whole];
    row[w] = accumulate ? row[w] + v : v;
  }
}

template <typename T>
void interleave_row(T* row, const T* phases, int64_t phase_ld, int64_t width, int64_t stride,
                    bool accumulate) {
  switch (stride) {
    case 2: interleave_row<2>(row, phases, phase_ld, width, accumulate); return;
    case 3: interleave_row<3>(row, phases, phase_ld, width, accumulate); return;
    case 4: interleave_row<4>(row, phases, phase_ld, width, accumulate); return;
    default:
      for (int64_t w = 0; w < width; ++w) {
        const T v = phases[(w % stride) * phase_ld + w / stride];
        row[w] = accumulate ? row[w] + v : v;
      }
  }
}

template <typename T>
void im2col(const T* x, T* col, const Conv2dProblem& pb, int64_t ld) {
  const int64_t RS = pb.R * pb.S, PQ = pb.P * pb.Q, HW = pb.H * pb.W;
  at::parallel_for(0, pb.C * RS, rows_grain(PQ), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / RS, r = (row / pb.S) % pb.R, s = row % pb.S;
      const T* xc = x + c * HW;
      T* dst = col + row * ld;
      const int64_t col_offset = s * pb.dilation_w;
      const ValidRange qs = valid_outputs(pb.W, pb.Q, pb.stride_w, pb.pad_w, col_offset);
      for (int64_t p = 0; p < pb.P; ++p) {
        T* d = dst + p * pb.Q;
        const int64_t ih = pb.input_row(p, r);
        if (ih < 0 || ih >= pb.H) {
          std::fill(d, d + pb.Q, T(0));
          continue;
        }
        const T* xr = xc + ih * pb.W + (qs.lo * pb.stride_w - pb.pad_w + col_offset);
        std::fill(d, d + qs.lo, T(0));
        gather_strided(d + qs.lo, xr, qs.hi - qs.lo, pb.stride_w);
        std::fill(d + qs.hi, d + pb.Q, T(0));
      }
    }
  });
}

// dx[c][ih][iw] = sum of col entries that im2col copied from (c, ih, iw):
// the adjoint of im2col; added to dx when `accumulate`, else dx is overwritten.
// One channel per task, so no two tasks write the same element and the
// summation order is fixed.
//
// At column stride s > 1 the entries of one patch row land s apart in dx,
// which the compiler cannot vectorise. They are summed instead into the
// column phases of the channel (input column w = i*s + j is entry i of phase
// j, see interleave_row), where one patch row's entries are consecutive, and
// the phases are interleaved into dx at the end.
//
// The patch matrix is read with rows `ld` apart and columns `column_stride`
// apart: 1 for the layout im2col writes, the row count for its transpose.
template <typename T>
void col2im(const T* col, T* dx, const Conv2dProblem& pb, int64_t ld, bool accumulate,
            int64_t column_stride = 1) {
  const int64_t RS = pb.R * pb.S, PQ = pb.P * pb.Q, HW = pb.H * pb.W;
  const int64_t stride = pb.stride_w, phase_width = ceil_div(pb.W, stride);
  at::parallel_for(0, pb.C, rows_grain(RS * PQ), [&](int64_t begin, int64_t end) {
    std::vector<T> phases(stride > 1 ? stride * pb.H * phase_width : 0);
    for (int64_t c = begin; c < end; ++c) {
      T* xc = dx + c * HW;
      // Row ih of column phase j starts at sums + (j*H + ih)*row_length.
      T* sums = stride > 1 ? phases.data() : xc;
      const int64_t row_length = stride > 1 ? phase_width : pb.W;
      if (stride > 1) {
        std::fill(phases.begin(), phases.end(), T(0));
      } else if (!accumulate) {
        std::fill(xc, xc + HW, T(0));
      }
      for (int64_t r = 0; r < pb.R; ++r) {
        for (int64_t s = 0; s < pb.S; ++s) {
          const T* src = col + ((c * pb.R + r) * pb.S + s) * ld;
          const int64_t col_offset = s * pb.dilation_w;
          const ValidRange qs = valid_outputs(pb.W, pb.Q, pb.stride_w, pb.pad_w, col_offset);
          // Input column of output q: q*stride + offset = (q + shift)*stride + phase.
          const int64_t offset = col_offset - pb.pad_w;
          const int64_t shift = -ceil_div(-offset, stride), phase = offset - shift * stride;
          for (int64_t p = 0; p < pb.P; ++p) {
            const int64_t ih = pb.input_row(p, r);
            if (ih < 0 || ih >= pb.H) continue;
            add_row(sums + (phase * pb.H + ih) * row_length + shift + qs.lo,
                    src + (p * pb.Q + qs.lo) * column_stride, qs.hi - qs.lo, column_stride);
          }
        }
      }
      if (stride > 1) {
        for (int64_t ih = 0; ih < pb.H; ++ih) {
          interleave_row(xc + ih * pb.W, sums + ih * row_length, pb.H * row_length, pb.W, stride,
                         accumulate);
        }
      }
    }
  });
}

}  // namespace cnnkit::cpu
