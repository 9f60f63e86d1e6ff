// Winograd convolution F(m x m, 3 x 3) on the CPU (winograd.h).
//
// With alpha = m + 2, an output tile Y (m x m) of one (input, output) channel
// pair is
//
//     Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A
//
// for the 3x3 kernel g and the alpha x alpha input tile d that the tile reads
// (B^T: alpha x alpha, G: alpha x 3, A^T: m x alpha; the matrices below).
// Summed over the input channels c, the element-wise product at transform
// element (xi, nu) is a matrix product over channels:
//
//     M[xi,nu] (K x tiles) = U[xi,nu] (K x C) @ V[xi,nu] (C x tiles),
//     U = G g G^T per (k, c),  V = B^T d B per (c, tile),  Y = A^T M A per (k, tile).
//
// The three passes:
//   forward          the products above, plus the bias in the output transform;
//   input gradient   dX is the convolution of dY, padded by 2 - pad at the
//                    top and left (the far sides follow from the sizes), with
//                    the kernel rotated by 180 degrees and its (k, c) roles
//                    swapped: the forward above on dY with that kernel;
//   weight gradient  the transpose of the forward's linear map in g:
//                    dM = A dY A^T per (k, tile) (output locations past P, Q
//                    are zero: the forward dropped them), dU[xi,nu] (K x C)
//                    = sum over tiles of dM[xi,nu] @ V[xi,nu]^T, and
//                    dW = G^T dU G.
//
// Layout and work: tiles run over (n, tile row, tile column); the batch is
// cut into blocks of whole tile rows, of about as many tiles as keep a
// block's transformed input and output (alpha^2 (C + K) values per tile)
// near the size of a core's cache. A block's transformed data are stored
// [transform element][channel][tile of the block], so each transform element
// is a plain matrix for gemm.h, and each transform works on a tile row at a
// time with the tile column as its contiguous (vectorised) axis: the input
// rows are split by column modulo m (a stride-m de-interleave), after which
// every combination the transform matrices call for is a sum of whole
// contiguous rows. With at least as many blocks as threads the blocks run in
// parallel, each thread on its own blocks; otherwise blocks run one after
// another, and each step inside (transform over channels, products over
// transform elements) runs in parallel. The block cut depends on the problem
// only, and the weight gradient's partial sums over fixed ranges of blocks
// are added in a fixed order, so results do not depend on the thread count.
#include "cpu/winograd.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/memory.h"

namespace cnnkit::cpu {
namespace {

template <size_t Rows, size_t Cols>
using Matrix = std::array<std::array<double, Cols>, Rows>;

template <size_t Rows, size_t Cols>
constexpr Matrix<Cols, Rows> transposed(const Matrix<Rows, Cols>& a) {
  Matrix<Cols, Rows> t{};
  for (size_t i = 0; i < Rows; ++i) {
    for (size_t j = 0; j < Cols; ++j) t[j][i] = a[i][j];
  }
  return t;
}

// F(2x2, 3x3): interpolation points 0, 1, -1 and infinity.
struct F2x2 {
  static constexpr int m = 2, alpha = 4;
  static constexpr Matrix<4, 4> BT = {{{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}}};
  static constexpr Matrix<2, 4> AT = {{{1, 1, 1, 0}, {0, 1, -1, -1}}};
  static constexpr Matrix<4, 3> G = {{{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}}};
  static constexpr Matrix<4, 2> A = transposed(AT);
  static constexpr Matrix<3, 4> GT = transposed(G);
};

// F(4x4, 3x3): interpolation points 0, 1, -1, 2, -2 and infinity, the
// smallest points after F(2x2)'s, which keep the transforms' entries (and so
// the float32 rounding error they amplify) small.
struct F4x4 {
  static constexpr int m = 4, alpha = 6;
  static constexpr Matrix<6, 6> BT = {{{4, 0, -5, 0, 1, 0},
                                       {0, -4, -4, 1, 1, 0},
                                       {0, 4, -4, -1, 1, 0},
                                       {0, -2, -1, 2, 1, 0},
                                       {0, 2, -1, -2, 1, 0},
                                       {0, 4, 0, -5, 0, 1}}};
  static constexpr Matrix<4, 6> AT = {{{1, 1, 1, 1, 1, 0},
                                       {0, 1, -1, 2, -2, 0},
                                       {0, 1, 1, 4, 4, 0},
                                       {0, 1, -1, 8, -8, 1}}};
  static constexpr Matrix<6, 3> G = {{{1.0 / 4, 0, 0},
                                      {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                      {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                      {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                      {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                      {0, 0, 1}}};
  static constexpr Matrix<6, 4> A = transposed(AT);
  static constexpr Matrix<3, 6> GT = transposed(G);
};

// ------------------------------------------------------------- combinations
//
// Every transform step is out = sum over j of Mat[Row][j] * in[j], over whole
// rows of n values. The coefficients are compile-time constants: terms with
// a zero coefficient are left out (a multiplication by zero is not free in
// floating point), and 1 and -1 reduce to an add or subtract.

template <const auto& Mat, int Row>
constexpr int first_nonzero() {
  int j = 0;
  while (Mat[Row][j] == 0) ++j;
  return j;
}

template <const auto& Mat, int Row, int Col, typename T>
inline void add_term(T& acc, const T* in, int64_t x) {
  if constexpr (Col != first_nonzero<Mat, Row>() && Mat[Row][Col] != 0) {
    acc += T(Mat[Row][Col]) * in[x];
  }
}

template <const auto& Mat, int Row, typename T, size_t... J>
inline void combine_impl(T* __restrict out, const T* const* in, int64_t n,
                         std::index_sequence<J...>) {
  constexpr int first = first_nonzero<Mat, Row>();
  const T* rows[sizeof...(J)] = {in[J]...};
  const T* __restrict lead = rows[first];
  for (int64_t x = 0; x < n; ++x) {
    T acc = T(Mat[Row][first]) * lead[x];
    (add_term<Mat, Row, J>(acc, rows[J], x), ...);
    out[x] = acc;
  }
}

// out[x] = sum over j of Mat[Row][j] * in[j][x], for x < n.
template <const auto& Mat, int Row, typename T>
inline void combine(T* out, const T* const* in, int64_t n) {
  constexpr int cols = int(std::tuple_size_v<std::decay_t<decltype(Mat[0])>>);
  combine_impl<Mat, Row>(out, in, n, std::make_index_sequence<cols>{});
}

// fn(std::integral_constant<int, i>) for i < N: a loop whose index can be a
// template argument.
template <typename F, int... I>
inline void static_for_impl(F&& fn, std::integer_sequence<int, I...>) {
  (fn(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
inline void static_for(F&& fn) {
  static_for_impl(fn, std::make_integer_sequence<int, N>{});
}

// ------------------------------------------------------------- geometry

// A Winograd convolution of `in_channels` planes (H_in x W_in) into
// `out_channels` planes (H_out x W_out): output (y, x) reads input rows
// y - pad_h + r and columns x - pad_w + s, r, s < 3 (zero outside the input;
// the padding may be negative). Tile rows are numbered n * tiles_h + ty.
struct Geometry {
  int64_t N, in_channels, H_in, W_in, out_channels, H_out, W_out, pad_h, pad_w, groups;
  int64_t tiles_h, tiles_w;
  int64_t rows_per_block, blocks;
  // Whether the products run transposed (block_products), with the
  // transformed kernels stored [xi][g][C/G][K/G] rather than [xi][g][K/G][C/G].
  bool transposed_products;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t tile_rows() const { return N * tiles_h; }
  int64_t first_row(int64_t block) const { return block * rows_per_block; }
  int64_t end_row(int64_t block) const {
    return std::min(tile_rows(), (block + 1) * rows_per_block);
  }
  int64_t tiles(int64_t block) const { return (end_row(block) - first_row(block)) * tiles_w; }
  int64_t max_block_tiles() const { return std::min(tile_rows(), rows_per_block) * tiles_w; }
};

// Bytes of transformed input and output per block that the block size aims
// at: about a core's L2 cache, so that a block's transforms write data its
// products then read from cache.
constexpr int64_t kBlockBytes = int64_t(1) << 21;
// But at least this many tiles per block: the products' width, below which
// they run well under the machine's peak and reread the transformed weight
// too often.
constexpr int64_t kMinBlockTiles = 64;

// gemm.h's kernels compute register tiles of 6 rows by 4 vectors (64
// float32 columns), with the columns along the result's unit stride. Blocks
// of fewer tiles than this (small images) would leave most of each register
// tile empty, so their products are computed transposed, M^T = V^T @ U^T
// (tiles x K/G, the tiles as rows), and then transposed into place.
constexpr int64_t kTransposedProductTiles = 48;

template <typename V>
Geometry make_geometry(int64_t N, int64_t in_channels, int64_t H_in, int64_t W_in,
                       int64_t out_channels, int64_t H_out, int64_t W_out, int64_t pad_h,
                       int64_t pad_w, int64_t groups, int64_t element_size) {
  Geometry geo{N, in_channels, H_in, W_in, out_channels, H_out, W_out, pad_h, pad_w, groups};
  geo.tiles_h = (H_out + V::m - 1) / V::m;
  geo.tiles_w = (W_out + V::m - 1) / V::m;
  const int64_t tile_bytes = V::alpha * V::alpha * (in_channels + out_channels) * element_size;
  const int64_t target = std::max(kMinBlockTiles, kBlockBytes / std::max<int64_t>(1, tile_bytes));
  geo.rows_per_block = std::max<int64_t>(1, target / std::max<int64_t>(1, geo.tiles_w));
  geo.blocks = (geo.tile_rows() + geo.rows_per_block - 1) / geo.rows_per_block;
  geo.transposed_products = geo.max_block_tiles() < kTransposedProductTiles &&
                            geo.out_per_group() >= geo.max_block_tiles();
  return geo;
}

// A block's transformed data, in buffers each thread keeps between calls
// (slot 0: the transformed input, slot 1: the transformed output or output
// gradient): fresh allocations of a few MiB per call get fresh pages from the
// kernel, and faulting them in cost as much as the transforms.
template <typename T>
T* thread_buffer(int slot, int64_t count) {
  struct Buffer {
    std::unique_ptr<T[]> data;
    int64_t size = 0;
  };
  thread_local Buffer buffers[2];
  Buffer& buffer = buffers[slot];
  if (buffer.size < count) {
    buffer.data.reset();
    buffer.data.reset(new T[count]);
    buffer.size = count;
  }
  return buffer.data.get();
}

// fn(begin, end) over [begin, end): split over the threads, or on the
// calling thread.
template <typename F>
void run_range(bool parallel, int64_t begin, int64_t end, const F& fn) {
  if (begin >= end) return;
  if (parallel) {
    at::parallel_for(begin, end, 1, fn);
  } else {
    fn(begin, end);
  }
}

// ------------------------------------------------------------- transforms

// dst_j[i] = src[m*i + j] for i < n and the outputs j < count (count <= 6):
// the columns of a row split by their position in a tile of m columns, with
// outputs m and m + 1 the first two positions of the next tile. Named
// restrict pointers (unused ones null) let the compiler vectorise the
// strided reads with permutations.
template <int m, int count, typename T>
inline void split_columns(const T* __restrict src, int64_t n, T* __restrict d0,
                          T* __restrict d1, T* __restrict d2, T* __restrict d3, T* __restrict d4,
                          T* __restrict d5) {
  static_assert(count <= 6, "at most 6 outputs");
  for (int64_t i = 0; i < n; ++i) {
    const T* s = src + m * i;
    if constexpr (count > 0) d0[i] = s[0];
    if constexpr (count > 1) d1[i] = s[1];
    if constexpr (count > 2) d2[i] = s[2];
    if constexpr (count > 3) d3[i] = s[3];
    if constexpr (count > 4) d4[i] = s[4];
    if constexpr (count > 5) d5[i] = s[5];
  }
}

template <int m, int count, typename T>
inline void split_columns(const T* src, int64_t n, T* dst, int64_t pitch) {
  T* d[6] = {};
  for (int j = 0; j < count; ++j) d[j] = dst + j * pitch;
  split_columns<m, count>(src, n, d[0], d[1], d[2], d[3], d[4], d[5]);
}

// dst[m*i + j] = src_j[i] for i < n, j < m (m <= 4): the inverse of a split.
template <int m, typename T>
inline void join_columns(T* __restrict dst, int64_t n, const T* __restrict s0,
                         const T* __restrict s1, const T* __restrict s2,
                         const T* __restrict s3) {
  static_assert(m <= 4, "at most 4 inputs");
  for (int64_t i = 0; i < n; ++i) {
    T* d = dst + m * i;
    if constexpr (m > 0) d[0] = s0[i];
    if constexpr (m > 1) d[1] = s1[i];
    if constexpr (m > 2) d[2] = s2[i];
    if constexpr (m > 3) d[3] = s3[i];
  }
}

// The transforms below work on one channel of a whole block at a time: a
// row of the block's tiles (all its tile rows, nt = rows * tiles_w values)
// is the contiguous axis, so that every combination runs over long rows.

// V[xi][c][t] = (B^T d B)[xi] for channels [c0, c1) and the tiles of tile
// rows [row0, row1) (t counted from row0's first tile); V has `ld` tiles per
// channel.
template <class W, typename T>
void input_transform(const Geometry& geo, const T* input, int64_t row0, int64_t row1, int64_t c0,
                     int64_t c1, T* V, int64_t ld) {
  constexpr int m = W::m, alpha = W::alpha;
  const int64_t tw = geo.tiles_w, span = (tw + 1) * m;  // padded row: tile columns + 1 tile
  const int64_t nt = (row1 - row0) * tw;
  // d[(i*alpha + j)*nt + t] = input tile t's element (i, j); cols = d B.
  std::vector<T> padded(span), d(alpha * alpha * nt), cols(alpha * alpha * nt);
  const int64_t lo = std::clamp<int64_t>(geo.pad_w, 0, span);
  const int64_t hi = std::clamp<int64_t>(geo.pad_w + geo.W_in, 0, span);
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t n = row / geo.tiles_h, ty = row % geo.tiles_h;
      const T* plane = input + (n * geo.in_channels + c) * geo.H_in * geo.W_in;
      for (int i = 0; i < alpha; ++i) {
        const int64_t y = ty * m - geo.pad_h + i;
        if (y < 0 || y >= geo.H_in || hi <= lo) {
          std::fill(padded.begin(), padded.end(), T(0));
        } else {
          std::fill(padded.begin(), padded.begin() + lo, T(0));
          std::memcpy(padded.data() + lo, plane + y * geo.W_in + (lo - geo.pad_w),
                      (hi - lo) * sizeof(T));
          std::fill(padded.begin() + hi, padded.end(), T(0));
        }
        split_columns<m, alpha>(padded.data(), tw, d.data() + i * alpha * nt + (row - row0) * tw,
                                nt);
      }
    }
    for (int i = 0; i < alpha; ++i) {
      const T* in[alpha];
      for (int j = 0; j < alpha; ++j) in[j] = d.data() + (i * alpha + j) * nt;
      static_for<alpha>([&](auto s) {
        combine<W::BT, decltype(s)::value>(cols.data() + (i * alpha + s) * nt, in, nt);
      });
    }
    for (int s = 0; s < alpha; ++s) {
      const T* in[alpha];
      for (int i = 0; i < alpha; ++i) in[i] = cols.data() + (i * alpha + s) * nt;
      static_for<alpha>([&](auto r) {
        combine<W::BT, decltype(r)::value>(V + ((r * alpha + s) * geo.in_channels + c) * ld, in,
                                           nt);
      });
    }
  }
}

// How the output transform adds a bias: none, one per output channel, or one
// per output location (K, H_out, W_out).
template <typename T>
struct Bias {
  const T* data = nullptr;
  bool per_location = false;
};

// Output planes [k0, k1) of tile rows [row0, row1): Y = A^T M A per tile,
// cut to the output's size, plus the bias.
template <class W, typename T>
void output_transform(const Geometry& geo, const T* M, int64_t ld, int64_t row0, int64_t row1,
                      int64_t k0, int64_t k1, Bias<T> bias, T* output) {
  constexpr int m = W::m, alpha = W::alpha;
  const int64_t tw = geo.tiles_w, nt = (row1 - row0) * tw;
  // cols = M A, (alpha x m) per tile; tiles = A^T M A, (m x m) per tile.
  std::vector<T> cols(alpha * m * nt), tiles(m * m * nt), line(m * tw);
  for (int64_t k = k0; k < k1; ++k) {
    for (int r = 0; r < alpha; ++r) {
      const T* in[alpha];
      for (int s = 0; s < alpha; ++s) in[s] = M + ((r * alpha + s) * geo.out_channels + k) * ld;
      static_for<m>([&](auto o) {
        combine<W::AT, decltype(o)::value>(cols.data() + (r * m + o) * nt, in, nt);
      });
    }
    for (int o = 0; o < m; ++o) {
      const T* in[alpha];
      for (int r = 0; r < alpha; ++r) in[r] = cols.data() + (r * m + o) * nt;
      static_for<m>([&](auto i) {
        combine<W::AT, decltype(i)::value>(tiles.data() + (i * m + o) * nt, in, nt);
      });
    }
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t n = row / geo.tiles_h, ty = row % geo.tiles_h;
      T* plane = output + (n * geo.out_channels + k) * geo.H_out * geo.W_out;
      for (int i = 0; i < m && ty * m + i < geo.H_out; ++i) {
        const int64_t y = ty * m + i;
        const T* part[4] = {};
        for (int o = 0; o < m; ++o) part[o] = tiles.data() + (i * m + o) * nt + (row - row0) * tw;
        join_columns<m>(line.data(), tw, part[0], part[1], part[2], part[3]);
        T* dst = plane + y * geo.W_out;
        if (bias.data == nullptr) {
          std::memcpy(dst, line.data(), geo.W_out * sizeof(T));
        } else if (bias.per_location) {
          const T* b = bias.data + (k * geo.H_out + y) * geo.W_out;
          for (int64_t x = 0; x < geo.W_out; ++x) dst[x] = line[x] + b[x];
        } else {
          const T b = bias.data[k];
          for (int64_t x = 0; x < geo.W_out; ++x) dst[x] = line[x] + b;
        }
      }
    }
  }
}

// dM[xi][k][t] = (A dY A^T)[xi] for output planes [k0, k1) of tile rows
// [row0, row1), with dY zero past the output's size.
template <class W, typename T>
void output_gradient_transform(const Geometry& geo, const T* grad_output, int64_t row0,
                               int64_t row1, int64_t k0, int64_t k1, T* dM, int64_t ld) {
  constexpr int m = W::m, alpha = W::alpha;
  const int64_t tw = geo.tiles_w, span = tw * m, nt = (row1 - row0) * tw;
  // e[(i*m + o)*nt + t] = dY tile t's element (i, o); cols = dY A^T.
  std::vector<T> padded(span), e(m * m * nt), cols(m * alpha * nt);
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t n = row / geo.tiles_h, ty = row % geo.tiles_h;
      const T* plane = grad_output + (n * geo.out_channels + k) * geo.H_out * geo.W_out;
      for (int i = 0; i < m; ++i) {
        const int64_t y = ty * m + i;
        if (y < geo.H_out) {
          std::memcpy(padded.data(), plane + y * geo.W_out, geo.W_out * sizeof(T));
          std::fill(padded.begin() + geo.W_out, padded.end(), T(0));
        } else {
          std::fill(padded.begin(), padded.end(), T(0));
        }
        split_columns<m, m>(padded.data(), tw, e.data() + i * m * nt + (row - row0) * tw, nt);
      }
    }
    // cols[i][s] = (dY A^T)[i][s] = sum over o of A[s][o] dY[i][o]
    for (int i = 0; i < m; ++i) {
      const T* in[m];
      for (int o = 0; o < m; ++o) in[o] = e.data() + (i * m + o) * nt;
      static_for<alpha>([&](auto s) {
        combine<W::A, decltype(s)::value>(cols.data() + (i * alpha + s) * nt, in, nt);
      });
    }
    for (int s = 0; s < alpha; ++s) {
      const T* in[m];
      for (int i = 0; i < m; ++i) in[i] = cols.data() + (i * alpha + s) * nt;
      static_for<alpha>([&](auto r) {
        combine<W::A, decltype(r)::value>(dM + ((r * alpha + s) * geo.out_channels + k) * ld, in,
                                          nt);
      });
    }
  }
}

// Per-element chunk of the kernel transforms: a few KiB per row.
constexpr int64_t kKernelChunk = 512;

// U[a*alpha + b][j] = (G g_j G^T)[a][b] for kernels g_j, j < count.
// gather(j0, n, taps) writes kernels [j0, j0 + n) as 9 rows
// taps[(r*3 + s)*kKernelChunk + j - j0], so that the transform works on
// contiguous rows whatever order the weight is stored in.
template <class W, typename T, typename Gather>
void kernel_transform(const Gather& gather, int64_t count, T* U, bool parallel) {
  constexpr int alpha = W::alpha;
  run_range(parallel, 0, (count + kKernelChunk - 1) / kKernelChunk, [&](int64_t b0, int64_t b1) {
    std::vector<T> taps(9 * kKernelChunk), half(alpha * 3 * kKernelChunk);  // half: (G g)[a][s]
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kKernelChunk, n = std::min(kKernelChunk, count - j0);
      gather(j0, n, taps.data());
      for (int s = 0; s < 3; ++s) {
        const T* in[3] = {taps.data() + (0 * 3 + s) * kKernelChunk,
                          taps.data() + (1 * 3 + s) * kKernelChunk,
                          taps.data() + (2 * 3 + s) * kKernelChunk};
        static_for<alpha>([&](auto a) {
          combine<W::G, decltype(a)::value>(half.data() + (a * 3 + s) * kKernelChunk, in, n);
        });
      }
      for (int a = 0; a < alpha; ++a) {
        const T* in[3] = {half.data() + (a * 3 + 0) * kKernelChunk,
                          half.data() + (a * 3 + 1) * kKernelChunk,
                          half.data() + (a * 3 + 2) * kKernelChunk};
        static_for<alpha>([&](auto c) {
          combine<W::G, decltype(c)::value>(U + (a * alpha + c) * count + j0, in, n);
        });
      }
    }
  });
}

// The gather of kernel_transform for a weight w (K, C/G, 3, 3): kernels in
// the order [g][k][c] (j = (g*K/G + k)*C/G + c, the weight's own order) or,
// when `c_major`, [g][c][k]; `rotated` turns each kernel by 180 degrees.
template <typename T>
auto kernel_gather(const T* w, int64_t G, int64_t Kg, int64_t Cg, bool c_major, bool rotated) {
  return [=](int64_t j0, int64_t n, T* taps) {
    for (int64_t j = j0; j < j0 + n; ++j) {
      int64_t source = j;  // the kernel's index in the weight's order
      if (c_major) {
        const int64_t k = j % Kg, gc = j / Kg, g = gc / Cg, c = gc % Cg;
        source = (g * Kg + k) * Cg + c;
      }
      const T* kernel = w + source * 9;
      for (int tap = 0; tap < 9; ++tap) {
        taps[tap * kKernelChunk + j - j0] = kernel[rotated ? 8 - tap : tap];
      }
    }
  };
}

// dw[j*9 + r*3 + s] = (G^T dU_j G)[r][s] for dU given as alpha^2 rows
// dU[a*alpha + b][j], j < count: the (K, C/G, 3, 3) weight layout for
// j = k*C/G + c.
template <class W, typename T>
void kernel_gradient_transform(const T* dU, int64_t count, T* dw, bool parallel) {
  constexpr int alpha = W::alpha;
  run_range(parallel, 0, (count + kKernelChunk - 1) / kKernelChunk, [&](int64_t b0, int64_t b1) {
    std::vector<T> half(3 * alpha * kKernelChunk);  // (G^T dU)[r][b]
    std::vector<T> taps(9 * kKernelChunk);          // [r*3 + s][j - j0]
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j0 = blk * kKernelChunk, n = std::min(kKernelChunk, count - j0);
      for (int b = 0; b < alpha; ++b) {
        const T* in[alpha];
        for (int a = 0; a < alpha; ++a) in[a] = dU + (a * alpha + b) * count + j0;
        static_for<3>([&](auto r) {
          combine<W::GT, decltype(r)::value>(half.data() + (r * alpha + b) * kKernelChunk, in, n);
        });
      }
      for (int r = 0; r < 3; ++r) {
        const T* in[alpha];
        for (int b = 0; b < alpha; ++b) in[b] = half.data() + (r * alpha + b) * kKernelChunk;
        static_for<3>([&](auto s) {
          combine<W::GT, decltype(s)::value>(taps.data() + (r * 3 + s) * kKernelChunk, in, n);
        });
      }
      for (int64_t j = 0; j < n; ++j) {
        for (int tap = 0; tap < 9; ++tap) dw[(j0 + j) * 9 + tap] = taps[tap * kKernelChunk + j];
      }
    }
  });
}

// ------------------------------------------------------------- passes

// Whether blocks run in parallel (each thread on its own blocks, single-
// threaded steps) rather than one after another with parallel steps.
bool blocks_in_parallel(int64_t tasks) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && tasks >= threads;
}

// The products of one block, M[xi] = U[xi] @ V[xi] per group, for transform
// elements [e0, e1). U is [xi][g][K/G][C/G]; V [xi][C][ld]; M [xi][K][ld].
template <class W, typename T>
void block_products(const Geometry& geo, const T* U, const T* V, T* M, int64_t ld,
                    int64_t tiles, bool parallel) {
  const int64_t G = geo.groups, Cg = geo.in_per_group(), Kg = geo.out_per_group();
  run_range(parallel, 0, W::alpha * W::alpha * G, [&](int64_t begin, int64_t end) {
    const bool transposed = geo.transposed_products;
    std::vector<T> product(transposed ? tiles * Kg : 0);
    for (int64_t e = begin; e < end; ++e) {  // e = xi*G + g
      const int64_t xi = e / G, g = e % G;
      const T* u = U + e * Kg * Cg;
      const T* v = V + (xi * geo.in_channels + g * Cg) * ld;
      T* out = M + (xi * geo.out_channels + g * Kg) * ld;
      if (!transposed) {
        gemm<T>(Kg, tiles, Cg, u, Cg, 1, v, ld, 1, out, ld, 1, /*accumulate=*/false);
        continue;
      }
      gemm<T>(tiles, Kg, Cg, v, 1, ld, u, Kg, 1, product.data(), Kg, 1, /*accumulate=*/false);
      for (int64_t k = 0; k < Kg; ++k) {
        for (int64_t t = 0; t < tiles; ++t) out[k * ld + t] = product[t * Kg + k];
      }
    }
  });
}

// The Winograd convolution of `input` with transformed kernels U into
// `output` (geometry `geo`), plus the bias.
template <class W, typename T>
void convolve(const Geometry& geo, const T* input, const T* U, Bias<T> bias, T* output) {
  constexpr int64_t elements = W::alpha * W::alpha;
  const int64_t ld = geo.max_block_tiles();
  const auto one_block = [&](int64_t b, T* V, T* M, bool parallel) {
    const int64_t row0 = geo.first_row(b), row1 = geo.end_row(b), tiles = geo.tiles(b);
    run_range(parallel, 0, geo.in_channels, [&](int64_t c0, int64_t c1) {
      input_transform<W>(geo, input, row0, row1, c0, c1, V, tiles);
    });
    block_products<W>(geo, U, V, M, tiles, tiles, parallel);
    run_range(parallel, 0, geo.out_channels, [&](int64_t k0, int64_t k1) {
      output_transform<W>(geo, M, tiles, row0, row1, k0, k1, bias, output);
    });
  };
  const int64_t V_size = elements * geo.in_channels * ld, M_size = elements * geo.out_channels * ld;
  if (blocks_in_parallel(geo.blocks)) {
    at::parallel_for(0, geo.blocks, 1, [&](int64_t b0, int64_t b1) {
      T* V = thread_buffer<T>(0, V_size);
      T* M = thread_buffer<T>(1, M_size);
      for (int64_t b = b0; b < b1; ++b) one_block(b, V, M, false);
    });
  } else {
    T* V = thread_buffer<T>(0, V_size);
    T* M = thread_buffer<T>(1, M_size);
    for (int64_t b = 0; b < geo.blocks; ++b) one_block(b, V, M, true);
  }
}

// The weight gradient is summed over tiles in `partial_sums` ranges of
// blocks, each range on one thread, and the ranges' sums added in range
// order: at most this many ranges, and at most kPartialSumBytes for them.
constexpr int64_t kMaxPartialSums = 8;
constexpr int64_t kPartialSumBytes = int64_t(64) << 20;

int64_t partial_sums(const Geometry& geo, int64_t dU_bytes) {
  const int64_t sums = std::min(geo.blocks, kMaxPartialSums);
  return std::max<int64_t>(1, std::min(sums, kPartialSumBytes / std::max<int64_t>(1, dU_bytes)));
}

// The weight gradient of the convolution `geo` with input `input` and
// output gradient `grad_output`: dU (alpha^2, K, C/G) summed over every tile,
// with `others` room for sums - 1 more partial sums of that size.

template <class W, typename T>
void kernel_gradient_sum(const Geometry& geo, const T* input, const T* grad_output, T* dU,
                         T* others, int64_t sums) {
  constexpr int64_t elements = W::alpha * W::alpha;
  const int64_t G = geo.groups, Cg = geo.in_per_group(), Kg = geo.out_per_group();
  const int64_t dU_size = elements * geo.out_channels * Cg;
  const int64_t ld = geo.max_block_tiles();
  // Partial sum 0 is dU itself, the others are [sums - 1][dU_size].
  const auto partial = [&](int64_t s) { return s == 0 ? dU : others + (s - 1) * dU_size; };
  const auto one_range = [&](int64_t s, T* V, T* dM, bool parallel) {
    T* acc = partial(s);
    const int64_t b_begin = s * geo.blocks / sums, b_end = (s + 1) * geo.blocks / sums;
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t row0 = geo.first_row(b), row1 = geo.end_row(b), tiles = geo.tiles(b);
      run_range(parallel, 0, geo.in_channels, [&](int64_t c0, int64_t c1) {
        input_transform<W>(geo, input, row0, row1, c0, c1, V, tiles);
      });
      run_range(parallel, 0, geo.out_channels, [&](int64_t k0, int64_t k1) {
        output_gradient_transform<W>(geo, grad_output, row0, row1, k0, k1, dM, tiles);
      });
      // dU[xi][g] (K/G x C/G) += dM[xi][g] (K/G x tiles) @ V[xi][g]^T
      run_range(parallel, 0, elements * G, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t xi = e / G, g = e % G;
          gemm<T>(Kg, Cg, tiles, dM + (xi * geo.out_channels + g * Kg) * tiles, tiles, 1,
                  V + (xi * geo.in_channels + g * Cg) * tiles, 1, tiles, acc + e * Kg * Cg, Cg, 1,
                  /*accumulate=*/b > b_begin);
        }
      });
    }
  };
  const int64_t V_size = elements * geo.in_channels * ld;
  const int64_t dM_size = elements * geo.out_channels * ld;
  if (blocks_in_parallel(sums)) {
    at::parallel_for(0, sums, 1, [&](int64_t s0, int64_t s1) {
      T* V = thread_buffer<T>(0, V_size);
      T* dM = thread_buffer<T>(1, dM_size);
      for (int64_t s = s0; s < s1; ++s) one_range(s, V, dM, false);
    });
  } else {
    T* V = thread_buffer<T>(0, V_size);
    T* dM = thread_buffer<T>(1, dM_size);
    for (int64_t s = 0; s < sums; ++s) one_range(s, V, dM, true);
  }
  if (sums > 1) {
    at::parallel_for(0, dU_size, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t s = 1; s < sums; ++s) {
        const T* __restrict src = partial(s);
        T* __restrict dst = dU;
        for (int64_t i = i0; i < i1; ++i) dst[i] += src[i];
      }
    });
  }
}

// ------------------------------------------------------------- choice

enum class Engine { automatic, winograd, direct };

Engine engine_from_environment() {
  const char* value = std::getenv("CNNKIT_CONV_ENGINE");
  const std::string name = value == nullptr ? "" : value;
  if (name.empty() || name == "auto") return Engine::automatic;
  if (name == "winograd") return Engine::winograd;
  if (name == "direct") return Engine::direct;
  TORCH_CHECK(false, "cnnkit: CNNKIT_CONV_ENGINE must be 'auto', 'winograd' or 'direct', but got '",
              name, "'");
  return Engine::automatic;
}

bool winograd_applies(const Conv2dProblem& pb, at::ScalarType dtype) {
  return pb.R == 3 && pb.S == 3 && pb.stride_h == 1 && pb.stride_w == 1 && pb.dilation_h == 1 &&
         pb.dilation_w == 1 && pb.tile_h == 1 && pb.tile_w == 1 &&
         (dtype == at::kFloat || dtype == at::kDouble);
}

// fn(T(), W()) for the dtype's scalar type T and its variant W. float32
// uses F(2x2, 3x3): F(4x4, 3x3)'s larger transform entries (up to 8 in A^T,
// 5 in B^T, 1/24 in G) amplify the rounding of float32 sums to many times
// the direct engine's error, while F(2x2)'s entries are 0, 1 and 1/2 and
// its error stays near the direct engine's. float64's rounding leaves
// F(4x4) far more accurate than any float32 result, and it needs 36
// products per 16 outputs where F(2x2) needs 16 per 4.
template <typename F>
void dispatch_variant(at::ScalarType dtype, const F& fn) {
  if (dtype == at::kDouble) {
    fn(double(), F4x4());
  } else {
    TORCH_CHECK(dtype == at::kFloat, "cnnkit: the Winograd engine takes float32 or float64");
    fn(float(), F2x2());
  }
}

}  // namespace

bool use_winograd(const Conv2dProblem& pb, at::ScalarType dtype) {
  if (!winograd_applies(pb, dtype)) return false;
  switch (engine_from_environment()) {
    case Engine::winograd:
      return true;
    case Engine::direct:
      return false;
    case Engine::automatic:
      break;
  }
  // Measured against the direct engine on ResNet-50's 3x3 layers (64 to 512
  // channels, 56x56 down to 7x7 outputs), forward and backward, at 1 and 2
  // threads: faster wherever the batch has at least 64 output tiles of 2x2,
  // by the most on the large images, where the direct engine's unfolded
  // input is largest. With fewer tiles (512 channels on 7x7 at batch 1 or 2:
  // 16 or 32 tiles), the products over the tiles are too narrow to pay for
  // transforming the kernels (16/9 of the weight, reread by every pass); at
  // batch 4 (64 tiles) it was 0.84-0.91 of the direct engine's time. Fewer
  // than 64 channels and outputs under 7x7 were not measured, so they stay
  // with the direct engine.
  const int64_t tiles = pb.N * ((pb.P + 1) / 2) * ((pb.Q + 1) / 2);
  return pb.group_in_channels() >= 64 && pb.group_out_channels() >= 64 && pb.P >= 7 &&
         pb.Q >= 7 && tiles >= 64;
}

at::Tensor winograd_forward(const Conv2dProblem& pb, const at::Tensor& input,
                            const at::Tensor& weight_phases, const at::Tensor& bias_phases) {
  TORCH_CHECK(winograd_applies(pb, input.scalar_type()),
              pb.op, ": the Winograd engine takes 3x3 kernels at stride 1 only");
  auto output = empty_large({pb.N, pb.K, pb.P, pb.Q}, input.options());
  if (output.numel() == 0) return output;
  const int64_t Cg = pb.group_in_channels(), Kg = pb.group_out_channels(), count = pb.K * Cg;
  dispatch_variant(input.scalar_type(), [&](auto type, auto variant) {
    using T = decltype(type);
    using Variant = decltype(variant);
    constexpr int64_t elements = Variant::alpha * Variant::alpha;
    const auto geo = make_geometry<Variant>(pb.N, pb.C, pb.H, pb.W, pb.K, pb.P, pb.Q, pb.pad_h,
                                            pb.pad_w, pb.groups, sizeof(T));
    auto U = empty_large({elements, count}, input.options());
    const T* w = weight_phases.const_data_ptr<T>();
    kernel_transform<Variant, T>(kernel_gather(w, pb.groups, Kg, Cg, geo.transposed_products,
                                               /*rotated=*/false),
                                 count, U.mutable_data_ptr<T>(), true);
    Bias<T> bias;
    if (bias_phases.defined()) {
      bias.data = bias_phases.const_data_ptr<T>();
      bias.per_location = pb.untied_bias;
    }
    convolve<Variant>(geo, input.const_data_ptr<T>(), U.const_data_ptr<T>(), bias,
                      output.mutable_data_ptr<T>());
  });
  return output;
}

at::Tensor winograd_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                   const at::Tensor& weight_phases) {
  TORCH_CHECK(winograd_applies(pb, grad_output.scalar_type()),
              pb.op, ": the Winograd engine takes 3x3 kernels at stride 1 only");
  auto grad_input = empty_large({pb.N, pb.C, pb.H, pb.W}, grad_output.options());
  if (grad_input.numel() == 0) return grad_input;
  const int64_t G = pb.groups, Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  const int64_t count = pb.C * Kg;
  dispatch_variant(grad_output.scalar_type(), [&](auto type, auto variant) {
    using T = decltype(type);
    using Variant = decltype(variant);
    constexpr int64_t elements = Variant::alpha * Variant::alpha;
    // The gradient as a convolution of dY (K planes of P x Q) into C planes
    // of H x W: input row h receives from output rows h + pad_h - r, that
    // is h - (2 - pad_h) + r' with r' = 2 - r: the kernel rotated by 180
    // degrees, with (k, c) swapped within each group.
    const auto geo = make_geometry<Variant>(pb.N, pb.K, pb.P, pb.Q, pb.C, pb.H, pb.W,
                                            2 - pb.pad_h, 2 - pb.pad_w, G, sizeof(T));
    auto U = empty_large({elements, count}, grad_output.options());
    const T* w = weight_phases.const_data_ptr<T>();
    kernel_transform<Variant, T>(
        kernel_gather(w, G, Kg, Cg, !geo.transposed_products, /*rotated=*/true), count,
        U.mutable_data_ptr<T>(), true);
    convolve<Variant>(geo, grad_output.const_data_ptr<T>(), U.const_data_ptr<T>(), Bias<T>{},
                      grad_input.mutable_data_ptr<T>());
  });
  return grad_input;
}

at::Tensor winograd_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                    const at::Tensor& input) {
  TORCH_CHECK(winograd_applies(pb, input.scalar_type()),
              pb.op, ": the Winograd engine takes 3x3 kernels at stride 1 only");
  const int64_t G = pb.groups, Cg = pb.group_in_channels(), Kg = pb.group_out_channels();
  const int64_t count = pb.K * Cg;
  if (pb.N == 0 || pb.P == 0 || pb.Q == 0) {
    return at::zeros({1, G, Kg, Cg * 9}, input.options());
  }
  auto grad_weight = at::empty({1, G, Kg, Cg * 9}, input.options());
  dispatch_variant(input.scalar_type(), [&](auto type, auto variant) {
    using T = decltype(type);
    using Variant = decltype(variant);
    constexpr int64_t elements = Variant::alpha * Variant::alpha;
    const auto geo = make_geometry<Variant>(pb.N, pb.C, pb.H, pb.W, pb.K, pb.P, pb.Q, pb.pad_h,
                                            pb.pad_w, G, sizeof(T));
    auto dU = empty_large({elements, count}, input.options());
    const int64_t sums = partial_sums(geo, elements * count * sizeof(T));
    auto others = empty_large({(sums - 1) * elements * count}, input.options());
    kernel_gradient_sum<Variant>(geo, input.const_data_ptr<T>(), grad_output.const_data_ptr<T>(),
                                 dU.mutable_data_ptr<T>(), others.mutable_data_ptr<T>(), sums);
    kernel_gradient_transform<Variant>(dU.const_data_ptr<T>(), count,
                                       grad_weight.mutable_data_ptr<T>(), true);
  });
  return grad_weight;
}

}  // namespace cnnkit::cpu
