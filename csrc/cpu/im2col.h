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
#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/backend.h"
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

// Strided loops over rows. A stride known at compile time lets the compiler
// vectorise them with permutes (measured per element, 28-element rows: a
// gather 5x and a scatter 2x faster than the same loop with a runtime
// stride). Strides 2 to 4 are the ones strided and tiled convolutions give
// (a tile phase's stride is stride * tile), so those get their own
// instances: with_static_stride calls fn with std::integral_constant<int64_t,
// stride> for them and with the plain stride otherwise. The loops below take
// the stride as `Stride`, either kind.
template <typename F>
void with_static_stride(int64_t stride, const F& fn) {
  switch (stride) {
    case 2: fn(std::integral_constant<int64_t, 2>{}); return;
    case 3: fn(std::integral_constant<int64_t, 3>{}); return;
    case 4: fn(std::integral_constant<int64_t, 4>{}); return;
    default: fn(stride);
  }
}

// Runs up to this long are copied element by element.
constexpr int64_t kShortRun = 4;

// d[i] = x[i * stride] for i in [0, n).
template <typename T, typename Stride>
void gather_run(T* __restrict d, const T* __restrict x, int64_t n, Stride stride) {
  for (int64_t i = 0; i < n; ++i) d[i] = x[i * stride];
}

// d[i] = x[2*i] for i in [0, n), n >= 1: the even lanes of two vectors of x
// make one vector of d, and a run shorter than a vector is one masked step.
// The compiler's vector loop for stride 2 only runs over whole vectors of d,
// so the 14-element runs of a 2x2 tile phase on 28x28 were copied element by
// element (measured on 4x256x28x28 with 2x2 tiles, forward: the unfolding
// took 22% fewer profile samples, 9.2% -> 7.4% of the call). Reads
// x[0, 2n-1) only.
template <typename T>
void gather_stride2(T* __restrict d, const T* __restrict x, int64_t n) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  int64_t i = 0;
  for (; i + L < n; i += L) {  // x[2i, 2i + 2L) lies within x[0, 2n-1)
    at::vec::deinterleave2(Vec::loadu(x + 2 * i), Vec::loadu(x + 2 * i + L)).first.store(d + i);
  }
  const int64_t rest = 2 * (n - i) - 1;  // 1 to 2L-1 elements left to read
  const Vec low = Vec::loadu(x + 2 * i, std::min(rest, L));
  const Vec high = rest > L ? Vec::loadu(x + 2 * i + L, rest - L) : Vec(T(0));
  at::vec::deinterleave2(low, high).first.store(d + i, n - i);
}

template <typename T>
void gather_strided(T* d, const T* x, int64_t n, int64_t stride) {
  if (n <= kShortRun) {
    // The runs of a tile phase on a small image (2 to 4 elements): too short
    // for the vector loops or a memcpy call to pay for themselves.
    for (int64_t i = 0; i < n; ++i) d[i] = x[i * stride];
  } else if (stride == 1) {
    std::memcpy(d, x, sizeof(T) * n);
  } else if (stride == 2) {
    gather_stride2(d, x, n);
  } else {
    with_static_stride(stride, [&](auto s) { gather_run(d, x, n, s); });
  }
}

// The inverse: d[i * stride] = x[i] for i in [0, n).
template <typename T, typename Stride>
void scatter_run(T* __restrict d, const T* __restrict x, int64_t n, Stride stride) {
  for (int64_t i = 0; i < n; ++i) d[i * stride] = x[i];
}

// d[2*i] = x[i] for i in [0, n), n >= 1, leaving the odd elements of d as
// they are. With AVX-512, each vector of x is paired with itself
// (x0 x0 x1 x1 ...) and stored under a mask of the even lanes: masked-off
// lanes are not written at all, so a thread storing another tile phase into
// the same rows (the odd columns) is not disturbed. The compiler's loop,
// like the gather's, only vectorises whole vectors, so 14-element runs were
// stored one by one (measured on 4x128x28x28 with 2x2 tiles, forward: the
// store of the phases' products took 15% as many profile samples as the
// products themselves, now 9.5%).
template <typename T>
C10_ALWAYS_INLINE void scatter_stride2(T* __restrict d, const T* __restrict x, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t L = Vec::size();
    constexpr uint32_t kEvenLanes = L == 16 ? 0x5555u : 0x55u;
    // The even lanes among the first 2m - 1, which hold x's next m elements.
    const auto even_lanes = [](int64_t m) { return kEvenLanes & ((1u << (2 * m - 1)) - 1u); };
    const auto store = [](T* dst, const Vec& v, uint32_t mask) {
      if constexpr (std::is_same_v<T, float>) {
        _mm512_mask_storeu_ps(dst, static_cast<__mmask16>(mask), v);
      } else {
        _mm512_mask_storeu_pd(dst, static_cast<__mmask8>(mask), v);
      }
    };
    for (int64_t i = 0; i < n; i += L) {
      const int64_t m = std::min(L, n - i), low = std::min(m, L / 2);
      const Vec v = Vec::loadu(x + i, m);
      const auto pairs = at::vec::interleave2(v, v);  // x[i .. i+L/2), x[i+L/2 .. i+L)
      store(d + 2 * i, pairs.first, even_lanes(low));
      if (m > low) store(d + 2 * i + L, pairs.second, even_lanes(m - low));
    }
    return;
  }
#endif
  scatter_run(d, x, n, std::integral_constant<int64_t, 2>{});
}

template <typename T>
void scatter_strided(T* d, const T* x, int64_t n, int64_t stride) {
  if (n <= kShortRun) {
    for (int64_t i = 0; i < n; ++i) d[i * stride] = x[i];
  } else if (stride == 1) {
    std::memcpy(d, x, sizeof(T) * n);
  } else if (stride == 2) {
    scatter_stride2(d, x, n);
  } else {
    with_static_stride(stride, [&](auto s) { scatter_run(d, x, n, s); });
  }
}

// d[i * d_step] += x[i * x_step] for i in [0, n). With both steps 1, in
// vectors with a masked last step: the compiler's loop only covers whole
// vectors, so the 14-element runs col2im adds for a 2x2 tile phase on 28x28
// were added element by element (measured, 4x128x28x28 with 2x2 tiles, input
// gradient in alternating single calls: 0.92 of the time).
template <typename T>
void add_run(T* __restrict d, int64_t d_step, const T* __restrict x, int64_t x_step, int64_t n) {
  if (d_step == 1 && x_step == 1) {
    using Vec = at::vec::Vectorized<T>;
    constexpr int64_t L = Vec::size();
    int64_t i = 0;
    for (; i + L <= n; i += L) (Vec::loadu(d + i) + Vec::loadu(x + i)).store(d + i);
    if (i < n) (Vec::loadu(d + i, n - i) + Vec::loadu(x + i, n - i)).store(d + i, n - i);
  } else {
    for (int64_t i = 0; i < n; ++i) d[i * d_step] += x[i * x_step];
  }
}

// Column phases of a row: element w = i*stride + j of a row is entry i of
// phase j. interleave_row writes (or adds) the phases phase[j][i], rows
// `phase_ld` apart, into a row of `width` elements.
template <typename T, typename Stride>
void interleave_run(T* __restrict row, const T* __restrict phases, int64_t phase_ld,
                    int64_t width, Stride stride, bool accumulate) {
  const int64_t whole = width / stride;
  if (accumulate) {
    for (int64_t i = 0; i < whole; ++i) {
      for (int64_t j = 0; j < stride; ++j) row[i * stride + j] += phases[j * phase_ld + i];
    }
  } else {
    for (int64_t i = 0; i < whole; ++i) {
      for (int64_t j = 0; j < stride; ++j) row[i * stride + j] = phases[j * phase_ld + i];
    }
  }
  for (int64_t w = whole * stride; w < width; ++w) {
    const T v = phases[(w - whole * stride) * phase_ld + whole];
    row[w] = accumulate ? row[w] + v : v;
  }
}

// Stride 2 in vectors: phases 0 and 1 at i..i+L become row[2i, 2i + 2L) by
// one interleave (at::vec::interleave2), the last step masked. The compiler's
// loop moved the 28-element rows of 2x2 tile phases on 28x28 element by
// element (measured, 4x128x28x28 with 2x2 tiles, input gradient in
// alternating single calls: 0.97 of the time).
template <typename T>
void interleave_stride2(T* __restrict row, const T* __restrict phases, int64_t phase_ld,
                        int64_t width, bool accumulate) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t L = Vec::size();
  for (int64_t i = 0; 2 * i < width; i += L) {
    const int64_t n = std::min(2 * L, width - 2 * i);  // row elements in this step
    const int64_t low = std::min(n, L), high = n - low;
    auto pair = at::vec::interleave2(Vec::loadu(phases + i, (n + 1) / 2),
                                     Vec::loadu(phases + phase_ld + i, n / 2));
    if (accumulate) {
      pair.first = pair.first + Vec::loadu(row + 2 * i, low);
      if (high > 0) pair.second = pair.second + Vec::loadu(row + 2 * i + L, high);
    }
    pair.first.store(row + 2 * i, low);
    if (high > 0) pair.second.store(row + 2 * i + L, high);
  }
}

template <typename T>
void interleave_row(T* row, const T* phases, int64_t phase_ld, int64_t width, int64_t stride,
                    bool accumulate) {
  if (stride == 2) return interleave_stride2(row, phases, phase_ld, width, accumulate);
  with_static_stride(stride, [&](auto s) {
    interleave_run(row, phases, phase_ld, width, s, accumulate);
  });
}

// Output rows of at most this many locations are unfolded (im2col) and folded
// back (col2im) by index, from tables of per-tap offsets (below).
constexpr int64_t kIndexedRowLength = 7;

// For each kernel tap (r, s) and each column of the patch matrices of
// `count` samples `sample_pitch` apart: the input offset the column reads
// from a channel's plane, or -1 in the padding.
// Entry [(r*S + s) * count*P*Q + i*P*Q + p*Q + q].
inline std::vector<int32_t> tap_offsets(const Conv2dProblem& pb, int64_t count,
                                        int64_t sample_pitch) {
  const int64_t PQ = pb.P * pb.Q, columns = count * PQ;
  std::vector<int32_t> offsets(pb.R * pb.S * columns);
  for (int64_t r = 0; r < pb.R; ++r) {
    for (int64_t s = 0; s < pb.S; ++s) {
      int32_t* tap = offsets.data() + (r * pb.S + s) * columns;
      for (int64_t i = 0; i < count; ++i) {
        for (int64_t p = 0; p < pb.P; ++p) {
          const int64_t ih = pb.input_row(p, r);
          for (int64_t q = 0; q < pb.Q; ++q) {
            const int64_t iw = pb.input_col(q, s);
            const bool inside = ih >= 0 && ih < pb.H && iw >= 0 && iw < pb.W;
            tap[i * PQ + p * pb.Q + q] = inside ? int32_t(i * sample_pitch + ih * pb.W + iw) : -1;
          }
        }
      }
    }
  }
  return offsets;
}

// im2col (below) of an output with short rows, by index: for each kernel tap
// (r, s), the input offset of every column of every sample, or -1 in the
// padding, is computed once; each patch row (c, r, s) is then one indexed
// copy from channel c, with none of the per-run bookkeeping (valid range,
// padding fills, a copy call per run of 1 to 7 elements) that dominated the
// unfolding of such rows. Measured in alternating single calls against the
// run-by-run copy, forward and weight gradient (both unfold): 4x4 tiles on
// 4x512x7x7 and 4x256x28x28/s2 (rows of 1 to 4 locations) 0.82 and 0.90-0.93
// of the time, 4x4 tiles on 4x128x28x28 and 2x2 tiles on 4x256x14x14 (rows
// of 7) 0.83-0.95, a dense 4x512x7x7 convolution 0.93 and 0.89; rows of 14
// (2x2 tiles on 28x28, stride-2 runs the vector copy takes) were 1.07x
// slower by index, hence the limit.
template <typename T>
void im2col_indexed(const T* x, T* col, const Conv2dProblem& pb, int64_t ld, int64_t count) {
  const int64_t RS = pb.R * pb.S, PQ = pb.P * pb.Q, HW = pb.H * pb.W, CHW = pb.C * HW;
  const int64_t columns = count * PQ;
  const auto offsets = tap_offsets(pb, count, CHW);
  at::parallel_for(0, pb.C * RS, grain_for(columns), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* channel = x + (row / RS) * HW;
      const int32_t* tap = offsets.data() + (row % RS) * columns;
      T* d = col + row * ld;
      for (int64_t j = 0; j < columns; ++j) d[j] = tap[j] >= 0 ? channel[tap[j]] : T(0);
    }
  });
}

// The patch matrices of `count` consecutive samples (x points at the first,
// samples C*H*W apart), side by side: sample i in columns [i*P*Q, (i+1)*P*Q).
// One task per row, for all samples: a small image (a tile phase: 4608 rows
// of 4 columns) still gives every thread a share, and the row's index
// arithmetic is done once for all samples.
template <typename T>
void im2col(const T* x, T* col, const Conv2dProblem& pb, int64_t ld, int64_t count = 1) {
  const int64_t RS = pb.R * pb.S, PQ = pb.P * pb.Q, HW = pb.H * pb.W, CHW = pb.C * HW;
  if (pb.Q <= kIndexedRowLength && count * CHW <= std::numeric_limits<int32_t>::max()) {
    return im2col_indexed(x, col, pb, ld, count);
  }
  at::parallel_for(0, pb.C * RS, grain_for(count * PQ), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row / RS, r = (row / pb.S) % pb.R, s = row % pb.S;
      const int64_t col_offset = s * pb.dilation_w;
      const ValidRange qs = valid_outputs(pb.W, pb.Q, pb.stride_w, pb.pad_w, col_offset);
      for (int64_t p = 0; p < pb.P; ++p) {
        const int64_t ih = pb.input_row(p, r);
        const bool inside = ih >= 0 && ih < pb.H;
        const T* xr =
            inside ? x + c * HW + ih * pb.W + (qs.lo * pb.stride_w - pb.pad_w + col_offset)
                   : nullptr;
        for (int64_t i = 0; i < count; ++i) {
          T* d = col + row * ld + i * PQ + p * pb.Q;
          if (!inside) {
            std::fill(d, d + pb.Q, T(0));
            continue;
          }
          std::fill(d, d + qs.lo, T(0));
          gather_strided(d + qs.lo, xr + i * CHW, qs.hi - qs.lo, pb.stride_w);
          std::fill(d + qs.hi, d + pb.Q, T(0));
        }
      }
    }
  });
}

// col2im (below) of an output with short rows, by index, as im2col_indexed
// unfolds them: each patch row of a (sample, channel) task is added into the
// plane at the tap's offsets, in the same order as the run-by-run fold
// (measured in alternating single calls against it, input gradient: 4x4
// tiles on 4x512x7x7 and 4x256x28x28/s2 0.81 and 0.82 of the time, 4x4 tiles
// on 4x128x28x28 0.92, 2x2 tiles on 4x256x14x14 0.88, a dense 4x512x7x7
// convolution 0.99).
template <typename T>
void col2im_indexed(const T* col, T* dx, const Conv2dProblem& pb, int64_t ld, bool accumulate,
                    int64_t column_stride, int64_t count) {
  const int64_t RS = pb.R * pb.S, PQ = pb.P * pb.Q, HW = pb.H * pb.W;
  const auto offsets = tap_offsets(pb, 1, 0);  // [(r*S + s) * P*Q + p*Q + q]
  at::parallel_for(0, count * pb.C, grain_for(RS * PQ), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / pb.C, c = task % pb.C;
      T* xc = dx + task * HW;
      if (!accumulate) std::fill(xc, xc + HW, T(0));
      for (int64_t rs = 0; rs < RS; ++rs) {
        const T* src = col + (c * RS + rs) * ld + i * PQ * column_stride;
        const int32_t* tap = offsets.data() + rs * PQ;
        for (int64_t j = 0; j < PQ; ++j) {
          if (tap[j] >= 0) xc[tap[j]] += src[j * column_stride];
        }
      }
    }
  });
}

// dx[c][ih][iw] = sum of col entries that im2col copied from (c, ih, iw):
// the adjoint of im2col; added to dx when `accumulate`, else dx is overwritten.
// One (sample, channel) plane per task, so no two tasks write the same
// element and the summation order is fixed.
//
// At column stride s > 1 the entries of one patch row land s apart in dx,
// which the compiler cannot vectorise. Where the patches cover the plane
// about twice or more (R*S*P*Q >= 2*H*W: a 3x3 kernel at stride 2, or a tile
// phase of 2x2 tiles) and s is 2 to 4, they are summed instead into the
// column phases of the channel (input column w = i*s + j is entry i of phase
// j, see interleave_row), where one patch row's entries are consecutive, and
// the phases are interleaved into dx at the end. Sparser patches (4x4 tiles'
// phases) would pay more for that pass over the plane than they save.
//
// The patch matrix is read with rows `ld` apart and columns `column_stride`
// apart: 1 for the layout im2col writes, the row count for its transpose.
// It holds `count` samples side by side as im2col writes them; their
// gradients are consecutive in dx.
//
// Output rows of at most kIndexedRowLength locations are folded by index
// (col2im_indexed, above).
template <typename T>
void col2im(const T* col, T* dx, const Conv2dProblem& pb, int64_t ld, bool accumulate,
            int64_t column_stride = 1, int64_t count = 1) {
  const int64_t RS = pb.R * pb.S, PQ = pb.P * pb.Q, HW = pb.H * pb.W;
  if (pb.Q <= kIndexedRowLength && HW <= std::numeric_limits<int32_t>::max()) {
    return col2im_indexed(col, dx, pb, ld, accumulate, column_stride, count);
  }
  const int64_t stride = pb.stride_w, phase_width = ceil_div(pb.W, stride);
  const bool by_phases = stride >= 2 && stride <= 4 && RS * PQ >= 2 * HW;
  at::parallel_for(0, count * pb.C, grain_for(RS * PQ), [&](int64_t begin, int64_t end) {
    std::vector<T> phases(by_phases ? stride * pb.H * phase_width : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / pb.C, c = task % pb.C;
      T* xc = dx + task * HW;
      // Element (ih, w) of the channel: by phases at
      // sums[(w%s * H + ih) * row_length + w/s], else at sums[ih * row_length + w].
      T* sums = by_phases ? phases.data() : xc;
      const int64_t row_length = by_phases ? phase_width : pb.W;
      if (by_phases) {
        std::fill(phases.begin(), phases.end(), T(0));
      } else if (!accumulate) {
        std::fill(xc, xc + HW, T(0));
      }
      for (int64_t r = 0; r < pb.R; ++r) {
        for (int64_t s = 0; s < pb.S; ++s) {
          const T* src = col + ((c * pb.R + r) * pb.S + s) * ld + i * PQ * column_stride;
          const int64_t col_offset = s * pb.dilation_w;
          const ValidRange qs = valid_outputs(pb.W, pb.Q, pb.stride_w, pb.pad_w, col_offset);
          // Input column of output q: q*stride + offset = (q + shift)*stride + phase.
          const int64_t offset = col_offset - pb.pad_w;
          const int64_t shift = -ceil_div(-offset, stride), phase = offset - shift * stride;
          // Where output q of row ih lands: sums[row_start(ih) + q*step].
          const int64_t step = by_phases ? 1 : stride;
          const int64_t first = by_phases ? phase * pb.H * row_length + shift : offset;
          for (int64_t p = 0; p < pb.P; ++p) {
            const int64_t ih = pb.input_row(p, r);
            if (ih < 0 || ih >= pb.H) continue;
            add_run(sums + first + ih * row_length + qs.lo * step, step,
                    src + (p * pb.Q + qs.lo) * column_stride, column_stride, qs.hi - qs.lo);
          }
        }
      }
      if (by_phases) {
        for (int64_t ih = 0; ih < pb.H; ++ih) {
          interleave_row(xc + ih * pb.W, sums + ih * row_length, pb.H * row_length, pb.W, stride,
                         accumulate);
        }
      }
    }
  });
}

}  // namespace cnnkit::cpu
