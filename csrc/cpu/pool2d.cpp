// CPU pooling kernels (SPEC 1.5): max, average and adaptive pooling of each
// (n, c) plane, and the channel max pool (Maxout).
//
// Layouts. NCHW: the output columns q of one output row are vectorised. With a
// column stride S of 1 or 2, tap (i, j) of V consecutive windows is V input
// elements S apart in one input row: one load, or two and a deinterleave. The
// windows that touch the padding, and other strides, take the scalar path.
// channels_last (NHWC): the channels of a pixel are contiguous and vectorised.
// Outputs and input gradients keep the input's memory format, as in PyTorch.
//
// Max pooling follows PyTorch's tie and NaN rule: a window is scanned in
// row-major order and a value replaces the running maximum when it is larger
// or NaN, so the result is the window's last NaN if it has one, else its first
// maximal element. Indices are flat positions h * W + w within the plane.
//
// Backward passes are deterministic: every grad_input element is summed by one
// thread, in a fixed order.
#include "problem.h"
#include "cpu/backend.h"
#include "cpu/memory.h"
#include "pool_ops.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

namespace cnnkit {
namespace {

using at::vec::Vectorized;
using cpu::grain_for;

template <typename scalar_t>
using Vec = Vectorized<scalar_t>;

// On the CPU the accumulation type of float and double is the type itself, so
// sums run in Vec<scalar_t> lanes.
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;
static_assert(std::is_same_v<acc_t<float>, float> && std::is_same_v<acc_t<double>, double>);

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }  // a >= 0, b > 0

// Output rows r = plane * P + p of `planes` planes in parallel: f(plane, p, r).
template <typename F>
void parallel_rows(int64_t planes, int64_t P, int64_t work_per_row, const F& f) {
  at::parallel_for(0, planes * P, grain_for(work_per_row), [&](int64_t begin, int64_t end) {
    int64_t plane = begin / P, p = begin % P;
    for (int64_t r = begin; r < end; ++r) {
      f(plane, p, r);
      if (++p == P) {
        p = 0;
        ++plane;
      }
    }
  });
}

template <typename scalar_t>
constexpr scalar_t minus_infinity() {
  return -std::numeric_limits<scalar_t>::infinity();
}

// --------------------------------------------------------------------------- window geometry

// Taps i in [begin, end) of a window whose tap i sits at start + i * dilation
// land inside [0, size). The problem builders guarantee start < size.
struct Taps {
  int64_t begin, end;
};

Taps valid_taps(int64_t start, int64_t kernel, int64_t dilation, int64_t size) {
  const int64_t begin = start < 0 ? ceil_div(-start, dilation) : 0;
  const int64_t end = std::min(kernel, ceil_div(size - start, dilation));
  return {begin, std::max(begin, end)};
}

// One pooling window: input rows h0 + i * dh for i in rows, columns w0 + j * dw
// for j in cols (only the taps inside the input).
struct Window {
  int64_t h0, dh;
  Taps rows;
  int64_t w0, dw;
  Taps cols;
  int64_t row(int64_t i) const { return h0 + i * dh; }
  int64_t col(int64_t j) const { return w0 + j * dw; }
  int64_t height() const { return rows.end - rows.begin; }
  int64_t width() const { return cols.end - cols.begin; }
};

// The windows of one problem, tabulated per axis once per call so that the
// loops do no integer division.
// row_count / col_count: average pooling divides window (p, q) by
// row_count[p] * col_count[q], the number of its positions inside the padded
// input (count_include_pad) or inside the input, unless divisor_override is
// given; for adaptive pooling they are the window heights and widths.
struct Windows {
  std::vector<int64_t> row_start, col_start;
  std::vector<int64_t> row_end, col_end;  // one past the last tap, padding included
  std::vector<Taps> row_taps, col_taps;
  std::vector<int64_t> row_count, col_count;
  int64_t dh = 1, dw = 1, divisor_override = 0;

  Window operator()(int64_t p, int64_t q) const {
    return {row_start[p], dh, row_taps[p], col_start[q], dw, col_taps[q]};
  }
};

// Max and average pooling: window o starts at o * stride - pad.
void tabulate_pool_axis(int64_t out, int64_t size, int64_t kernel, int64_t stride, int64_t pad,
                        int64_t dilation, bool count_include_pad, std::vector<int64_t>& start,
                        std::vector<int64_t>& end, std::vector<Taps>& taps,
                        std::vector<int64_t>& count) {
  for (int64_t o = 0; o < out; ++o) {
    const int64_t s = o * stride - pad;
    const int64_t padded_end = std::min(s + kernel, size + pad);
    start.push_back(s);
    end.push_back(s + (kernel - 1) * dilation + 1);
    taps.push_back(valid_taps(s, kernel, dilation, size));
    count.push_back(count_include_pad ? padded_end - s
                                      : std::min(padded_end, size) - std::max<int64_t>(s, 0));
  }
}

Windows pool_windows(const Pool2dProblem& pb) {
  Windows w;
  w.dh = pb.dilation_h;
  w.dw = pb.dilation_w;
  w.divisor_override = pb.divisor_override;
  tabulate_pool_axis(pb.P, pb.H, pb.kernel_h, pb.stride_h, pb.pad_h, pb.dilation_h,
                     pb.count_include_pad, w.row_start, w.row_end, w.row_taps, w.row_count);
  tabulate_pool_axis(pb.Q, pb.W, pb.kernel_w, pb.stride_w, pb.pad_w, pb.dilation_w,
                     pb.count_include_pad, w.col_start, w.col_end, w.col_taps, w.col_count);
  return w;
}

// Adaptive pooling: window o covers [floor(o * size / out), ceil((o + 1) * size / out)),
// so the windows tile the input, neighbours overlapping by at most one element.
void tabulate_adaptive_axis(int64_t out, int64_t size, std::vector<int64_t>& start,
                            std::vector<int64_t>& end, std::vector<Taps>& taps,
                            std::vector<int64_t>& count) {
  for (int64_t o = 0; o < out; ++o) {
    const int64_t s = o * size / out, e = ceil_div((o + 1) * size, out);
    start.push_back(s);
    end.push_back(e);
    taps.push_back({0, e - s});
    count.push_back(e - s);
  }
}

Windows adaptive_windows(const Pool2dProblem& pb) {
  Windows w;
  tabulate_adaptive_axis(pb.P, pb.H, w.row_start, w.row_end, w.row_taps, w.row_count);
  tabulate_adaptive_axis(pb.Q, pb.W, w.col_start, w.col_end, w.col_taps, w.col_count);
  return w;
}

// Output columns [lo, hi) whose windows have every column tap inside the input.
struct Interior {
  int64_t lo, hi;
};

Interior interior_columns(const Pool2dProblem& pb) {
  const int64_t lo = std::min(pb.Q, ceil_div(pb.pad_w, pb.stride_w));
  const int64_t last = pb.W - 1 + pb.pad_w - (pb.kernel_w - 1) * pb.dilation_w;  // q*s <= last
  const int64_t hi = last < 0 ? 0 : std::min(pb.Q, last / pb.stride_w + 1);
  return {lo, std::max(lo, hi)};
}

// Adaptive pooling whose output size divides the input size has the windows of
// plain pooling with kernel = stride = input / output and no padding, so it can
// take the vectorised paths of plain pooling.
bool is_uniform_adaptive(const Pool2dProblem& pb) {
  return pb.H % pb.P == 0 && pb.W % pb.Q == 0;
}

Pool2dProblem uniform_geometry(const Pool2dProblem& pb) {
  Pool2dProblem g = pb;
  g.kernel_h = g.stride_h = pb.H / pb.P;
  g.kernel_w = g.stride_w = pb.W / pb.Q;
  g.pad_h = g.pad_w = 0;
  g.dilation_h = g.dilation_w = 1;
  return g;
}

// --------------------------------------------------------------------------- vector helpers

// Max-pool indices travel in the bits of a Vec<scalar_t> (int32 lanes under
// float, int64 under double), so that one lane mask moves a value and its index.
template <typename scalar_t>
using lane_index_t = at::vec::int_same_size_t<scalar_t>;

template <typename scalar_t>
using IndexVec = Vectorized<lane_index_t<scalar_t>>;

// Whether every index below `count` fits an index lane.
template <typename scalar_t>
bool index_fits(int64_t count) {
  return count <= static_cast<int64_t>(std::numeric_limits<lane_index_t<scalar_t>>::max());
}

template <typename scalar_t>
Vec<scalar_t> index_bits(const IndexVec<scalar_t>& index) {
  return at::vec::cast<scalar_t>(index);
}

template <typename scalar_t>
Vec<scalar_t> index_bits(int64_t index) {
  return index_bits<scalar_t>(IndexVec<scalar_t>(static_cast<lane_index_t<scalar_t>>(index)));
}

// The running maximum (see the top of the file): v replaces best when larger or NaN.
template <typename scalar_t>
inline void update_max(scalar_t& best, int64_t& best_at, scalar_t v, int64_t at) {
  if (v > best || std::isnan(v)) {
    best = v;
    best_at = at;
  }
}

template <typename scalar_t>
inline void update_max(Vec<scalar_t>& best, Vec<scalar_t>& best_at, const Vec<scalar_t>& v,
                       const Vec<scalar_t>& at) {
  const auto wins = (v > best) | v.isnan();
  best = Vec<scalar_t>::blendv(best, v, wins);
  best_at = Vec<scalar_t>::blendv(best_at, at, wins);
}

// Stores the first n index lanes as int64 (int32 lanes sign-extended).
template <typename scalar_t>
inline void store_index(const Vec<scalar_t>& bits, int64_t* dst, int64_t n) {
  if constexpr (sizeof(scalar_t) == sizeof(int64_t)) {
    bits.store(dst, n);
  } else {
    lane_index_t<scalar_t> lanes[Vec<scalar_t>::size()];
    bits.store(lanes);
    for (int64_t l = 0; l < n; ++l) dst[l] = lanes[l];
  }
}

// Lane l < n holds p[l * S] (S = 1 or 2); the other lanes are zero. Reads
// p[0 .. (n - 1) * S] and nothing beyond.
template <int S, typename scalar_t>
inline Vec<scalar_t> load_every(const scalar_t* p, int64_t n) {
  using V = Vec<scalar_t>;
  constexpr int64_t size = V::size();
  if constexpr (S == 1) {
    return V::loadu(p, n);
  } else {
    static_assert(S == 2);
    const int64_t count = 2 * n - 1;
    const V lo = V::loadu(p, std::min(count, size));
    const V hi = count > size ? V::loadu(p + size, count - size) : V(scalar_t(0));
    return at::vec::deinterleave2(lo, hi).first;
  }
}

// acc + p[0] + ... + p[n - 1]: in order (as ATen) below one vector, by lanes above.
template <typename scalar_t>
inline acc_t<scalar_t> accumulate(acc_t<scalar_t> acc, const scalar_t* p, int64_t n) {
  using V = Vec<scalar_t>;
  int64_t i = 0;
  if (n >= V::size()) {
    V sum(scalar_t(0));
    for (; i + V::size() <= n; i += V::size()) sum += V::loadu(p + i);
    scalar_t lanes[V::size()];
    sum.store(lanes);
    for (int64_t half = V::size() / 2; half > 0; half /= 2) {  // pairwise: a short chain
      for (int64_t l = 0; l < half; ++l) lanes[l] += lanes[l + half];
    }
    acc += lanes[0];
  }
  for (; i < n; ++i) acc += p[i];
  return acc;
}

// Calls f(std::integral_constant<int, S>) with S the column stride when the
// NCHW vector path handles it (1 or 2), else S = 0 (scalar windows only).
template <typename F>
void with_column_stride(int64_t stride_w, bool vectorize, const F& f) {
  if (vectorize && stride_w == 1) {
    f(std::integral_constant<int, 1>{});
  } else if (vectorize && stride_w == 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

// --------------------------------------------------------------------------- max pooling

// One window of one NCHW plane.
template <typename scalar_t>
void max_window(const scalar_t* plane, int64_t W, const Window& w, scalar_t* out,
                int64_t* index) {
  scalar_t best = minus_infinity<scalar_t>();
  int64_t best_at = w.row(w.rows.begin) * W + w.col(w.cols.begin);
  for (int64_t i = w.rows.begin; i < w.rows.end; ++i) {
    for (int64_t j = w.cols.begin; j < w.cols.end; ++j) {
      const int64_t at = w.row(i) * W + w.col(j);
      update_max(best, best_at, plane[at], at);
    }
  }
  *out = best;
  *index = best_at;
}

// Output row p of one NCHW plane. With S > 0 (the column stride, 1 or 2) the
// interior windows go V at a time: lane l of a vector is window q + l.
template <int S, typename scalar_t>
void max_pool_row(const scalar_t* plane, const Pool2dProblem& pb, Interior inner, int64_t p,
                  const Windows& windows, scalar_t* out, int64_t* index) {
  int64_t q = 0;
  if constexpr (S > 0) {
    using V = Vec<scalar_t>;
    using IV = IndexVec<scalar_t>;
    using I = lane_index_t<scalar_t>;
    for (; q < inner.lo; ++q) max_window(plane, pb.W, windows(p, q), out + q, index + q);
    const Window w = windows(p, inner.lo);
    const IV lane_offset = IV::arange(0, S);
    for (; q < inner.hi; q += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), inner.hi - q);
      const int64_t col0 = q * S - pb.pad_w;  // first column of window q
      V best(minus_infinity<scalar_t>());
      const int64_t first = w.row(w.rows.begin) * pb.W + col0;  // first tap of window q
      V best_at = index_bits<scalar_t>(lane_offset + IV(static_cast<I>(first)));
      for (int64_t i = w.rows.begin; i < w.rows.end; ++i) {
        for (int64_t j = 0; j < pb.kernel_w; ++j) {
          const int64_t at = w.row(i) * pb.W + col0 + j * pb.dilation_w;
          update_max(best, best_at, load_every<S>(plane + at, n),
                     index_bits<scalar_t>(lane_offset + IV(static_cast<I>(at))));
        }
      }
      best.store(out + q, n);
      store_index(best_at, index + q, n);
    }
    q = inner.hi;
  }
  for (; q < pb.Q; ++q) max_window(plane, pb.W, windows(p, q), out + q, index + q);
}

template <typename scalar_t>
void max_pool_nchw(const scalar_t* in, scalar_t* out, int64_t* index, const Pool2dProblem& pb,
                   bool vectorize, const Windows& windows) {
  // Without the vector path (adaptive windows of varying sizes) there is no
  // stride to find the interior by.
  const Interior inner = vectorize ? interior_columns(pb) : Interior{0, 0};
  with_column_stride(pb.stride_w, vectorize && index_fits<scalar_t>(pb.H * pb.W), [&](auto s) {
    constexpr int S = decltype(s)::value;
    const int64_t work = pb.Q * std::max<int64_t>(1, pb.kernel_h * pb.kernel_w);
    parallel_rows(pb.N * pb.C, pb.P, work, [&](int64_t plane, int64_t p, int64_t r) {
      max_pool_row<S>(in + plane * pb.H * pb.W, pb, inner, p, windows, out + r * pb.Q,
                      index + r * pb.Q);
    });
  });
}

// One window of one NHWC image, all channels: V at a time, the remainder (or
// all, for planes too large for index lanes) one by one.
template <typename scalar_t>
void max_pixel_nhwc(const scalar_t* image, int64_t W, int64_t C, const Window& w, bool vectorize,
                    scalar_t* out, int64_t* index) {
  using V = Vec<scalar_t>;
  const int64_t first = w.row(w.rows.begin) * W + w.col(w.cols.begin);
  int64_t c = 0;
  for (; vectorize && c + V::size() <= C; c += V::size()) {
    V best(minus_infinity<scalar_t>());
    V best_at = index_bits<scalar_t>(first);
    for (int64_t i = w.rows.begin; i < w.rows.end; ++i) {
      for (int64_t j = w.cols.begin; j < w.cols.end; ++j) {
        const int64_t at = w.row(i) * W + w.col(j);
        update_max(best, best_at, V::loadu(image + at * C + c), index_bits<scalar_t>(at));
      }
    }
    best.store(out + c);
    store_index(best_at, index + c, V::size());
  }
  for (; c < C; ++c) {
    scalar_t best = minus_infinity<scalar_t>();
    int64_t best_at = first;
    for (int64_t i = w.rows.begin; i < w.rows.end; ++i) {
      for (int64_t j = w.cols.begin; j < w.cols.end; ++j) {
        const int64_t at = w.row(i) * W + w.col(j);
        update_max(best, best_at, image[at * C + c], at);
      }
    }
    out[c] = best;
    index[c] = best_at;
  }
}

template <typename scalar_t>
void max_pool_nhwc(const scalar_t* in, scalar_t* out, int64_t* index, const Pool2dProblem& pb,
                   const Windows& windows) {
  const bool vectorize = index_fits<scalar_t>(pb.H * pb.W);
  const int64_t work = pb.Q * pb.C * std::max<int64_t>(1, pb.kernel_h * pb.kernel_w);
  parallel_rows(pb.N, pb.P, work, [&](int64_t n, int64_t p, int64_t r) {
    const scalar_t* image = in + n * pb.H * pb.W * pb.C;
    for (int64_t q = 0; q < pb.Q; ++q) {
      const int64_t o = (r * pb.Q + q) * pb.C;
      max_pixel_nhwc(image, pb.W, pb.C, windows(p, q), vectorize, out + o, index + o);
    }
  });
}

// Indices come from the forward; one out of range would write outside the
// plane, so each is checked where it is read.
inline void check_index(const char* fn, int64_t at, int64_t plane_size) {
  TORCH_CHECK(static_cast<uint64_t>(at) < static_cast<uint64_t>(plane_size), fn,
              ": expected indices in [0, ", plane_size, ") (positions h * W + w in the input ",
              "plane), but got ", at);
}

// grad_input[n, c, index] += grad_output[n, c, p, q]: each plane scattered by one thread.
template <typename scalar_t>
void max_pool_backward_nchw(const scalar_t* go, const int64_t* index, scalar_t* gi,
                            const Pool2dProblem& pb, const char* fn) {
  const int64_t in_plane = pb.H * pb.W, out_plane = pb.P * pb.Q;
  const int64_t grain = grain_for(in_plane + out_plane);
  at::parallel_for(0, pb.N * pb.C, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* g = gi + plane * in_plane;
      std::fill(g, g + in_plane, scalar_t(0));
      const int64_t* ix = index + plane * out_plane;
      const scalar_t* o = go + plane * out_plane;
      for (int64_t k = 0; k < out_plane; ++k) {
        check_index(fn, ix[k], in_plane);
        g[ix[k]] += o[k];
      }
    }
  });
}

// Channels-last: tasks are (image, block of channels), each zeroing its slice
// of grad_input, then scattering into it in output order. Blocks are whole
// images when there are images enough for the threads, so that accesses stay
// contiguous; block boundaries do not change any result.
template <typename scalar_t>
void max_pool_backward_nhwc(const scalar_t* go, const int64_t* index, scalar_t* gi,
                            const Pool2dProblem& pb, const char* fn) {
  const int64_t in_plane = pb.H * pb.W, out_plane = pb.P * pb.Q;
  const int64_t blocks = std::clamp<int64_t>(ceil_div(at::get_num_threads(), pb.N), 1,
                                             ceil_div(pb.C, 64));
  const int64_t block = ceil_div(pb.C, blocks);
  at::parallel_for(0, pb.N * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks;
      const int64_t c0 = (t % blocks) * block, c1 = std::min(pb.C, c0 + block);
      scalar_t* g = gi + n * in_plane * pb.C;
      for (int64_t x = 0; x < in_plane; ++x) {
        std::fill(g + x * pb.C + c0, g + x * pb.C + c1, scalar_t(0));
      }
      for (int64_t k = n * out_plane; k < (n + 1) * out_plane; ++k) {
        const int64_t* ix = index + k * pb.C;
        const scalar_t* o = go + k * pb.C;
        for (int64_t c = c0; c < c1; ++c) {
          check_index(fn, ix[c], in_plane);
          g[ix[c] * pb.C + c] += o[c];
        }
      }
    }
  });
}

// --------------------------------------------------------------------------- average pooling

// Sum of one window of one NCHW plane, row by row; window columns are contiguous.
template <typename scalar_t>
acc_t<scalar_t> sum_window(const scalar_t* plane, int64_t W, const Window& w) {
  acc_t<scalar_t> sum = 0;
  if (w.col(w.cols.begin) == 0 && w.width() == W) {  // whole rows: one contiguous span
    return accumulate(sum, plane + w.row(w.rows.begin) * W, w.height() * W);
  }
  for (int64_t i = w.rows.begin; i < w.rows.end; ++i) {
    sum = accumulate(sum, plane + w.row(i) * W + w.col(w.cols.begin), w.width());
  }
  return sum;
}

// A window's sum, or its output's gradient, divided as ATen divides it: for
// average pooling by divisor_override or by row_count[p] * col_count[q] (see
// Windows), for adaptive pooling by the window's height, then its width. T is
// scalar_t or Vec<scalar_t>; `col` is col_count[q] as T (in a vector, that of
// each lane's window). The product of the counts is the integer one ATen
// divides by for windows below 2^24 elements (float; double: 2^53).
template <typename scalar_t, typename T>
T divide_window(T x, const Windows& windows, bool adaptive, int64_t p, T col) {
  const T row(static_cast<scalar_t>(windows.row_count[p]));
  if (adaptive) return x / row / col;
  if (windows.divisor_override != 0) {
    return x / T(static_cast<scalar_t>(windows.divisor_override));
  }
  return x / (row * col);
}

// Output row p of one NCHW plane of an average-type pool: out = finish(window
// sum, p, q); vectorised as max_pool_row. Interior windows have the full
// kernel width, so a vector of them shares the divisor of its first window.
template <int S, typename scalar_t, typename Finish>
void avg_pool_row(const scalar_t* plane, const Pool2dProblem& pb, const Windows& windows,
                  Interior inner, int64_t p, const Finish& finish, scalar_t* out) {
  auto scalar_window = [&](int64_t q) {
    out[q] = finish(sum_window(plane, pb.W, windows(p, q)), p, q);
  };
  int64_t q = 0;
  if constexpr (S > 0) {
    using V = Vec<scalar_t>;
    for (; q < inner.lo; ++q) scalar_window(q);
    const Window w = windows(p, inner.lo);
    for (; q < inner.hi; q += V::size()) {
      const int64_t n = std::min<int64_t>(V::size(), inner.hi - q);
      const int64_t col0 = q * S - pb.pad_w;
      V sum(scalar_t(0));
      for (int64_t i = w.rows.begin; i < w.rows.end; ++i) {
        const scalar_t* row = plane + w.row(i) * pb.W + col0;
        for (int64_t j = 0; j < pb.kernel_w; ++j) sum += load_every<S>(row + j, n);
      }
      finish(sum, p, q).store(out + q, n);
    }
    q = inner.hi;
  }
  for (; q < pb.Q; ++q) scalar_window(q);
}

template <typename scalar_t, typename Finish>
void avg_pool_nchw(const scalar_t* in, scalar_t* out, const Pool2dProblem& pb,
                   const Windows& windows, bool vectorize, const Finish& finish) {
  const Interior inner = vectorize ? interior_columns(pb) : Interior{0, 0};
  const int64_t work = pb.Q * ceil_div(pb.H, pb.P) * ceil_div(pb.W, pb.Q);
  with_column_stride(pb.stride_w, vectorize, [&](auto s) {
    constexpr int S = decltype(s)::value;
    parallel_rows(pb.N * pb.C, pb.P, work, [&](int64_t plane, int64_t p, int64_t r) {
      avg_pool_row<S>(in + plane * pb.H * pb.W, pb, windows, inner, p, finish, out + r * pb.Q);
    });
  });
}

// Global average pooling of NCHW planes (a classifier head: many small planes).
// V planes at a time: each summed into a vector, then the V vectors folded
// pairwise (deinterleave, add) until lane r holds the sum of plane r.
template <typename scalar_t>
void global_avg_pool_nchw(const scalar_t* in, scalar_t* out, int64_t planes, int64_t H,
                          int64_t W) {
  using V = Vec<scalar_t>;
  constexpr int64_t size = V::size();
  const int64_t HW = H * W;
  const int64_t blocks = ceil_div(planes, size);
  at::parallel_for(0, blocks, grain_for(HW * size), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t first = b * size, count = std::min(size, planes - first);
      V sums[size];
      for (int64_t r = 0; r < size; ++r) {
        sums[r] = V(scalar_t(0));
        if (r >= count) continue;
        const scalar_t* plane = in + (first + r) * HW;
        for (int64_t x = 0; x < HW; x += size) {
          sums[r] += V::loadu(plane + x, std::min(size, HW - x));
        }
      }
      for (int64_t width = size; width > 1; width /= 2) {
        for (int64_t r = 0; r < width / 2; ++r) {
          const auto halves = at::vec::deinterleave2(sums[2 * r], sums[2 * r + 1]);
          sums[r] = halves.first + halves.second;
        }
      }
      // As adaptive pooling divides: by the height, then the width.
      const V height(static_cast<scalar_t>(H)), width(static_cast<scalar_t>(W));
      (sums[0] / height / width).store(out + first, count);
    }
  });
}

// Average-type pooling of NHWC images: out = finish(window sum, p, q), channels
// V at a time.
template <typename scalar_t, typename Finish>
void sum_pool_nhwc(const scalar_t* in, scalar_t* out, const Pool2dProblem& pb,
                   const Windows& windows, const Finish& finish) {
  using V = Vec<scalar_t>;
  const int64_t work = pb.Q * pb.C * ceil_div(pb.H, pb.P) * ceil_div(pb.W, pb.Q);
  parallel_rows(pb.N, pb.P, work, [&](int64_t n, int64_t p, int64_t r) {
    const scalar_t* image = in + n * pb.H * pb.W * pb.C;
    for (int64_t q = 0; q < pb.Q; ++q) {
      const Window w = windows(p, q);
      scalar_t* o = out + (r * pb.Q + q) * pb.C;
      for (int64_t c = 0; c < pb.C; c += V::size()) {
        const int64_t lanes = std::min<int64_t>(V::size(), pb.C - c);
        V sum(scalar_t(0));
        for (int64_t i = w.rows.begin; i < w.rows.end; ++i) {
          for (int64_t j = w.cols.begin; j < w.cols.end; ++j) {
            sum += V::loadu(image + (w.row(i) * pb.W + w.col(j)) * pb.C + c, lanes);
          }
        }
        finish(sum, p, q).store(o + c, lanes);
      }
    }
  });
}

// Lane l < n: p[l * S] += v[l] (S = 1 or 2); touches p[0 .. (n - 1) * S] only.
template <int S, typename scalar_t>
inline void add_every(scalar_t* p, const Vec<scalar_t>& v, int64_t n) {
  using V = Vec<scalar_t>;
  constexpr int64_t size = V::size();
  if constexpr (S == 1) {
    (V::loadu(p, n) + v).store(p, n);
  } else {
    static_assert(S == 2);
    const int64_t count = 2 * n - 1;
    const auto spaced = at::vec::interleave2(v, V(scalar_t(0)));  // v0 0 v1 0 ...
    const int64_t first = std::min(count, size);
    (V::loadu(p, first) + spaced.first).store(p, first);
    if (count > size) {
      (V::loadu(p + size, count - size) + spaced.second).store(p + size, count - size);
    }
  }
}

// dst[x] (+)= src[x] for x < n: `accumulate` adds, else stores.
template <typename scalar_t>
inline void put_row(scalar_t* dst, const scalar_t* src, int64_t n, bool accumulate) {
  using V = Vec<scalar_t>;
  for (int64_t x = 0; x < n; x += V::size()) {
    const int64_t lanes = std::min<int64_t>(V::size(), n - x);
    const V v = V::loadu(src + x, lanes);
    (accumulate ? V::loadu(dst + x, lanes) + v : v).store(dst + x, lanes);
  }
}

// grad_input of NCHW planes for an average-type pool: output (p, q) adds its
// delta (its gradient divided as in the forward; row_deltas(p, grad_row, out)
// gives those of output row p) to every input of its window. The windows of
// one output row share their rows, so the spread factors: the deltas go along
// the columns into a row buffer (interior windows V at a time for a column
// stride S of 1 or 2), then the buffer goes to each input row of the windows.
// Window rows only move down as p grows, so an input row is stored on its
// first visit and accumulated on later ones; rows no window covers are zeroed.
template <int S, typename scalar_t, typename RowDeltas>
void spread_nchw(const scalar_t* go, scalar_t* gi, const Pool2dProblem& pb,
                 const Windows& windows, Interior inner, const RowDeltas& row_deltas) {
  using V = Vec<scalar_t>;
  const int64_t grain = grain_for(pb.H * pb.W + pb.P * pb.Q);
  at::parallel_for(0, pb.N * pb.C, grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> delta(pb.Q), spread(pb.W);
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* g = gi + plane * pb.H * pb.W;
      int64_t written = 0;  // input rows [0, written) hold partial sums
      for (int64_t p = 0; p < pb.P; ++p) {
        row_deltas(p, go + (plane * pb.P + p) * pb.Q, delta.data());
        std::fill(spread.begin(), spread.end(), scalar_t(0));
        auto spread_window = [&](int64_t q) {
          const Window w = windows(p, q);
          for (int64_t j = w.cols.begin; j < w.cols.end; ++j) spread[w.col(j)] += delta[q];
        };
        int64_t q = 0;
        if constexpr (S > 0) {
          for (; q < inner.lo; ++q) spread_window(q);
          for (int64_t j = 0; j < pb.kernel_w; ++j) {
            for (q = inner.lo; q < inner.hi; q += V::size()) {
              const int64_t n = std::min<int64_t>(V::size(), inner.hi - q);
              const V d = V::loadu(delta.data() + q, n);
              add_every<S>(spread.data() + q * S - pb.pad_w + j, d, n);
            }
          }
          q = inner.hi;
        }
        for (; q < pb.Q; ++q) spread_window(q);

        const Window w = windows(p, 0);
        const int64_t top = w.row(w.rows.begin), bottom = w.row(w.rows.end);  // dilation 1
        std::fill(g + written * pb.W, g + std::max(written, top) * pb.W, scalar_t(0));
        for (int64_t h = top; h < bottom; ++h) {
          put_row(g + h * pb.W, spread.data(), pb.W, /*accumulate=*/h < written);
        }
        written = std::max(written, bottom);
      }
      std::fill(g + written * pb.W, g + pb.H * pb.W, scalar_t(0));
    }
  });
}

// Global average pooling, backward: each input gets its plane's gradient / H / W.
template <typename scalar_t>
void global_avg_pool_backward_nchw(const scalar_t* go, scalar_t* gi, int64_t planes, int64_t H,
                                   int64_t W) {
  at::parallel_for(0, planes, grain_for(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t d = go[plane] / static_cast<scalar_t>(H) / static_cast<scalar_t>(W);
      std::fill(gi + plane * H * W, gi + (plane + 1) * H * W, d);
    }
  });
}

// Windows [lo[i], hi[i]) along one axis whose span [start, end) contains input
// i: the windows that read it. Spans move right as the window index grows, so
// one sweep finds them.
struct Readers {
  std::vector<int64_t> lo, hi;
};

Readers readers(const std::vector<int64_t>& start, const std::vector<int64_t>& end,
                int64_t size) {
  Readers r{std::vector<int64_t>(size), std::vector<int64_t>(size)};
  const int64_t out = static_cast<int64_t>(start.size());
  int64_t first = 0, past = 0;
  for (int64_t i = 0; i < size; ++i) {
    while (first < out && end[first] <= i) ++first;
    while (past < out && start[past] <= i) ++past;
    r.lo[i] = first;
    r.hi[i] = std::max(first, past);
  }
  return r;
}

// grad_input of NHWC images for an average-type pool. First each output's
// delta = divide(grad, p, q) (its gradient divided as in the forward), once;
// then each input pixel gathers the deltas of the windows that read it, in
// output order (the order in which ATen's scatter adds them), channels V at a
// time, so each element is written once. Tasks are output rows, then input rows.
template <typename scalar_t, typename Divide>
void gather_nhwc(const scalar_t* go, scalar_t* gi, const Pool2dProblem& pb,
                 const Windows& windows, const Divide& divide) {
  using V = Vec<scalar_t>;
  const std::unique_ptr<scalar_t[]> delta(new scalar_t[pb.N * pb.P * pb.Q * pb.C]);
  parallel_rows(pb.N, pb.P, pb.Q * pb.C, [&](int64_t, int64_t p, int64_t r) {
    for (int64_t q = 0; q < pb.Q; ++q) {
      const int64_t at = (r * pb.Q + q) * pb.C;
      for (int64_t c = 0; c < pb.C; c += V::size()) {
        const int64_t lanes = std::min<int64_t>(V::size(), pb.C - c);
        divide(V::loadu(go + at + c, lanes), p, q).store(delta.get() + at + c, lanes);
      }
    }
  });
  const Readers rows = readers(windows.row_start, windows.row_end, pb.H);
  const Readers cols = readers(windows.col_start, windows.col_end, pb.W);
  const int64_t work = pb.W * pb.C * ceil_div(pb.P, pb.H) * ceil_div(pb.Q, pb.W);
  parallel_rows(pb.N, pb.H, work, [&](int64_t n, int64_t h, int64_t r) {
    for (int64_t w = 0; w < pb.W; ++w) {
      scalar_t* dst = gi + (r * pb.W + w) * pb.C;
      for (int64_t c = 0; c < pb.C; c += V::size()) {
        const int64_t lanes = std::min<int64_t>(V::size(), pb.C - c);
        V sum(scalar_t(0));
        for (int64_t p = rows.lo[h]; p < rows.hi[h]; ++p) {
          for (int64_t q = cols.lo[w]; q < cols.hi[w]; ++q) {
            sum += V::loadu(delta.get() + ((n * pb.P + p) * pb.Q + q) * pb.C + c, lanes);
          }
        }
        sum.store(dst + c, lanes);
      }
    }
  });
}

// --------------------------------------------------------------------------- channel max pool

// out[n, k, h, w] = max over c in [k * pool, (k + 1) * pool) of in[n, c, h, w];
// index = that c. NCHW: the planes of a group compared element-wise, V pixels
// at a time.
template <typename scalar_t>
void channel_max_nchw(const scalar_t* in, scalar_t* out, int64_t* index,
                      const ChannelPoolProblem& pb) {
  using V = Vec<scalar_t>;
  const int64_t HW = pb.H * pb.W, K = pb.out_channels();
  const bool vectorize = index_fits<scalar_t>(pb.C);
  at::parallel_for(0, pb.N * K, grain_for(HW * pb.pool_size), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = (t % K) * pb.pool_size;  // first channel of the group
      const scalar_t* group = in + ((t / K) * pb.C + c0) * HW;
      scalar_t* o = out + t * HW;
      int64_t* ix = index + t * HW;
      int64_t x = 0;
      for (; vectorize && x + V::size() <= HW; x += V::size()) {
        V best(minus_infinity<scalar_t>());
        V best_at = index_bits<scalar_t>(c0);
        for (int64_t j = 0; j < pb.pool_size; ++j) {
          update_max(best, best_at, V::loadu(group + j * HW + x), index_bits<scalar_t>(c0 + j));
        }
        best.store(o + x);
        store_index(best_at, ix + x, V::size());
      }
      for (; x < HW; ++x) {  // the remainder, or all for channel counts beyond index lanes
        scalar_t best = minus_infinity<scalar_t>();
        int64_t best_at = c0;
        for (int64_t j = 0; j < pb.pool_size; ++j) {
          update_max(best, best_at, group[j * HW + x], c0 + j);
        }
        o[x] = best;
        ix[x] = best_at;
      }
    }
  });
}

// NHWC: the groups are runs of pool_size channels within each pixel.
template <typename scalar_t>
void channel_max_nhwc(const scalar_t* in, scalar_t* out, int64_t* index,
                      const ChannelPoolProblem& pb) {
  const int64_t K = pb.out_channels();
  at::parallel_for(0, pb.N * pb.H * pb.W, grain_for(pb.C), [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const scalar_t* x = in + pixel * pb.C;
      for (int64_t k = 0; k < K; ++k) {
        scalar_t best = minus_infinity<scalar_t>();
        int64_t best_at = k * pb.pool_size;
        for (int64_t c = k * pb.pool_size; c < (k + 1) * pb.pool_size; ++c) {
          update_max(best, best_at, x[c], c);
        }
        out[pixel * K + k] = best;
        index[pixel * K + k] = best_at;
      }
    }
  });
}

// grad_input[n, c, h, w] = grad_output[n, k, h, w] where index[n, k, h, w] == c,
// else 0 (k = c / pool_size): a gather, so every element is written once.
template <typename scalar_t>
void channel_max_backward_nchw(const scalar_t* go, const int64_t* index, scalar_t* gi,
                               const ChannelPoolProblem& pb) {
  const int64_t HW = pb.H * pb.W, K = pb.out_channels();
  at::parallel_for(0, pb.N * pb.C, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / pb.C, c = plane % pb.C;
      const int64_t from = (n * K + c / pb.pool_size) * HW;
      scalar_t* g = gi + plane * HW;
      for (int64_t x = 0; x < HW; ++x) g[x] = index[from + x] == c ? go[from + x] : scalar_t(0);
    }
  });
}

template <typename scalar_t>
void channel_max_backward_nhwc(const scalar_t* go, const int64_t* index, scalar_t* gi,
                               const ChannelPoolProblem& pb) {
  const int64_t K = pb.out_channels();
  at::parallel_for(0, pb.N * pb.H * pb.W, grain_for(pb.C), [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      for (int64_t c = 0; c < pb.C; ++c) {
        const int64_t from = pixel * K + c / pb.pool_size;
        gi[pixel * pb.C + c] = index[from] == c ? go[from] : scalar_t(0);
      }
    }
  });
}

// --------------------------------------------------------------------------- backend

// The CPU backend of the ops in csrc/pool_ops.h; results on huge pages where
// the system allows (cpu/memory.h).
struct PoolBackend {
  using DeviceScope = cpu::DeviceScope;
  static constexpr auto empty_large = &cpu::empty_large;

  static void max_pool(const Pool2dProblem& pb, bool adaptive, bool channels_last,
                       const at::Tensor& x, at::Tensor& out, at::Tensor& index) {
    const Windows windows = adaptive ? adaptive_windows(pb) : pool_windows(pb);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkit.max_pool2d", [&] {
      const scalar_t* in = x.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      int64_t* ix = index.mutable_data_ptr<int64_t>();
      if (channels_last) {
        max_pool_nhwc(in, o, ix, pb, windows);
      } else {
        // Adaptive windows of varying sizes take the scalar path.
        const bool uniform = adaptive && is_uniform_adaptive(pb);
        max_pool_nchw(in, o, ix, uniform ? uniform_geometry(pb) : pb, !adaptive || uniform,
                      windows);
      }
    });
  }

  static void max_pool_backward(const Pool2dProblem& pb, const char* fn, bool channels_last,
                                const at::Tensor& go, const at::Tensor& ix,
                                at::Tensor& grad_input) {
    AT_DISPATCH_FLOATING_TYPES(grad_input.scalar_type(), "cnnkit.max_pool2d_backward", [&] {
      const scalar_t* g = go.const_data_ptr<scalar_t>();
      const int64_t* i = ix.const_data_ptr<int64_t>();
      scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
      if (channels_last) {
        max_pool_backward_nhwc(g, i, gi, pb, fn);
      } else {
        max_pool_backward_nchw(g, i, gi, pb, fn);
      }
    });
  }

  static void avg_pool(const Pool2dProblem& pb, bool adaptive, bool channels_last,
                       const at::Tensor& x, at::Tensor& out) {
    const Windows windows = adaptive ? adaptive_windows(pb) : pool_windows(pb);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkit.avg_pool2d", [&] {
      const scalar_t* in = x.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      auto finish = [&](auto sum, int64_t p, int64_t q) {
        using T = decltype(sum);
        return divide_window<scalar_t>(sum, windows, adaptive, p,
                                       T(static_cast<scalar_t>(windows.col_count[q])));
      };
      if (channels_last) {
        sum_pool_nhwc(in, o, pb, windows, finish);
      } else if (adaptive && pb.P == 1 && pb.Q == 1) {
        global_avg_pool_nchw(in, o, pb.N * pb.C, pb.H, pb.W);
      } else {
        // Adaptive windows of varying sizes take the scalar path.
        const bool uniform = adaptive && is_uniform_adaptive(pb);
        avg_pool_nchw(in, o, uniform ? uniform_geometry(pb) : pb, windows, !adaptive || uniform,
                      finish);
      }
    });
  }

  static void avg_pool_backward(const Pool2dProblem& pb, bool adaptive, bool channels_last,
                                const at::Tensor& go, at::Tensor& grad_input) {
    const Windows windows = adaptive ? adaptive_windows(pb) : pool_windows(pb);
    AT_DISPATCH_FLOATING_TYPES(grad_input.scalar_type(), "cnnkit.avg_pool2d_backward", [&] {
      const scalar_t* g = go.const_data_ptr<scalar_t>();
      scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
      if (channels_last) {
        gather_nhwc(g, gi, pb, windows, [&](auto grad, int64_t p, int64_t q) {
          using T = decltype(grad);
          return divide_window<scalar_t>(grad, windows, adaptive, p,
                                         T(static_cast<scalar_t>(windows.col_count[q])));
        });
        return;
      }
      // The deltas of one output row, V at a time.
      using V = Vec<scalar_t>;
      const std::vector<scalar_t> col_count(windows.col_count.begin(), windows.col_count.end());
      auto row_deltas = [&](int64_t p, const scalar_t* grad, scalar_t* delta) {
        for (int64_t q = 0; q < pb.Q; q += V::size()) {
          const int64_t n = std::min<int64_t>(V::size(), pb.Q - q);
          divide_window<scalar_t>(V::loadu(grad + q, n), windows, adaptive, p,
                                  V::loadu(col_count.data() + q, n))
              .store(delta + q, n);
        }
      };
      if (adaptive && pb.P == 1 && pb.Q == 1) {
        global_avg_pool_backward_nchw(g, gi, pb.N * pb.C, pb.H, pb.W);
        return;
      }
      // Adaptive windows of varying sizes take the scalar path.
      const bool uniform = adaptive && is_uniform_adaptive(pb);
      const Pool2dProblem geometry = uniform ? uniform_geometry(pb) : pb;
      const bool vectorize = !adaptive || uniform;
      const Interior inner = vectorize ? interior_columns(geometry) : Interior{0, 0};
      with_column_stride(geometry.stride_w, vectorize, [&](auto s) {
        spread_nchw<decltype(s)::value>(g, gi, geometry, windows, inner, row_deltas);
      });
    });
  }

  static void channel_max_pool(const ChannelPoolProblem& pb, bool channels_last,
                               const at::Tensor& x, at::Tensor& out, at::Tensor& index) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkit.channel_max_pool", [&] {
      const scalar_t* in = x.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      int64_t* ix = index.mutable_data_ptr<int64_t>();
      if (channels_last) {
        channel_max_nhwc(in, o, ix, pb);
      } else {
        channel_max_nchw(in, o, ix, pb);
      }
    });
  }

  static void channel_max_pool_backward(const ChannelPoolProblem& pb, bool channels_last,
                                        const at::Tensor& go, const at::Tensor& ix,
                                        at::Tensor& grad_input) {
    AT_DISPATCH_FLOATING_TYPES(grad_input.scalar_type(), "cnnkit.channel_max_pool_backward", [&] {
      const scalar_t* g = go.const_data_ptr<scalar_t>();
      const int64_t* i = ix.const_data_ptr<int64_t>();
      scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
      if (channels_last) {
        channel_max_backward_nhwc(g, i, gi, pb);
      } else {
        channel_max_backward_nchw(g, i, gi, pb);
      }
    });
  }
};

}  // namespace
}  // namespace cnnkit

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  CNNKIT_REGISTER_POOL2D_OPS(m, cnnkit::PoolBackend);
}
