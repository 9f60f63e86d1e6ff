// Tensor-core convolution for float16 and bfloat16 with float32 accumulation:
// the three implicit GEMMs of conv2d.cuh for one tile phase, on WMMA 16x16x16
// fragments (sm_80 and newer).
//
// Every kernel computes one BM x BN tile of C[m, n] = sum_kk A[m, kk] * B[kk, n]
// for one group. blockIdx.x enumerates the tiles with the n tile fastest, so the
// blocks running side by side share their A rows (the large, gathered operand)
// while those are in L2; blockIdx.z is the group (launched in chunks of at most
// 65535 groups) and, for the weight gradient, blockIdx.y the reduction slice.
// 256 threads = 8 warps, each owning a WM x WN sub-tile of
// float accumulator fragments:
//
//     WideTile    128 x 128, warps 2 (m) x 4 (n) of 64 x 32
//     NarrowTile  128 x 64,  warps 4 (m) x 2 (n) of 32 x 32 (for n sizes <= 64)
//
// The reduction runs in steps of BK = 32. Each step the block gathers the next
// A tile (BM x BK) and B tile (BK x BN) from global memory into registers
// (predicated: padding, out-of-range taps and the ragged edges of the GEMM read
// as zero) while the tensor cores work on the current tiles in shared memory,
// then stores them into the other of two shared buffers: one __syncthreads per
// step. Both tiles are stored as rows along kk, A as [m][kk] (row-major
// matrix_a) and B as [n][kk] (col-major matrix_b), each row padded to BK + 8
// elements: 80-byte rows keep the 16-byte stores of consecutive rows and the
// fragment loads (8 rows of 16 bytes) free of bank conflicts, and every
// fragment starts 32-byte aligned as WMMA requires.
// The gather works on the raw 16-bit patterns (zero is +0.0 in both formats).
//
// The epilogue reuses the operand buffers: each warp stores one 16-column slab
// of its accumulators column-major into its own float staging tile, then its
// 32 lanes walk the slab with consecutive lanes on consecutive m, which is the
// contiguous direction of every destination, so the writes are coalesced.
//
// The three GEMMs (g = group, Kg = K/G, Cg = C/G). The forward and input-
// backward reductions run over the taps (r, s) with the channel fastest (the
// small weight tensor is permuted on the host to match), so that when the
// channel count is a multiple of 16 the 16 consecutive kk a thread gathers
// share one tap: one bounds (or phase) check per step, then one load per
// channel plane.
//   forward         m = (n, i, j) output pixel of the phase, n = k, kk = (r, s, c)
//                   A: input patches (thread fixed on m, walking 16 kk),
//                   B: weight rows (G, Kg, R*S*Cg)
//   input backward  m = (n, h, w) input pixel, n = c, kk = (r, s, k)
//                   A: grad_output at the output location of the phase whose
//                   tap (r, s) lands on (h, w), zero where there is none;
//                   B: weight rows (G, Cg, R*S*Kg)
//   weight backward m = (c, r, s), n = k, kk = (n, i, j) output pixel of the phase
//                   A: input patches, B: grad_output; the warps' lanes walk kk
//                   (the contiguous direction of both), a per-block table holds
//                   the (c, r, s) decomposition of the tile's rows. The long
//                   reduction is cut into a fixed number of slices (a function
//                   of the problem's shape only), each writing float partial
//                   sums; a second kernel adds the slices in slice order and
//                   converts: deterministic, no atomics.
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "cuda/conv2d.cuh"
#include "cuda/helpers.cuh"

namespace cnnkit::cuda::tensor_core {
namespace {

namespace wmma = nvcuda::wmma;

// The WMMA element type of a dispatched 16-bit type (same bit layout).
template <typename scalar_t>
struct TensorCoreElement;
template <>
struct TensorCoreElement<at::Half> {
  using type = __half;
};
template <>
struct TensorCoreElement<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <int BM_, int BN_, int WM_, int WN_>
struct TileShape {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_;
  static constexpr int BK = 32;
  static constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN, kWarps = kWarpsM * kWarpsN;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int FM = WM / 16, FN = WN / 16;  // fragments per warp along m and n
  static constexpr int kPitch = BK + 8;             // elements per shared operand row
  static constexpr int kATile = BM * kPitch;        // elements of one A buffer
  static constexpr int kBTile = BN * kPitch;        // elements of one B buffer
  static constexpr int kStagePitch = WM + 4;        // floats per column of a staging slab
  static constexpr int kStageFloats = 16 * kStagePitch;
  static constexpr int kOperandBytes = 2 * (kATile + kBTile) * 2;
  static constexpr int kStageBytes = kWarps * kStageFloats * 4;
  static constexpr int kSharedBytes = kOperandBytes > kStageBytes ? kOperandBytes : kStageBytes;
  static_assert(BM % WM == 0 && BN % WN == 0 && WM % 32 == 0 && WN % 16 == 0);
  static_assert(kThreads == 256 && BK == 32, "the operand loaders assume 256 threads, BK = 32");
  static_assert((kATile * 2) % 32 == 0 && (kBTile * 2) % 32 == 0 && (kPitch * 2) % 16 == 0);
};
using WideTile = TileShape<128, 128, 64, 32>;
using NarrowTile = TileShape<128, 64, 32, 32>;

// Runs launch(shape) with the tile shape suited to a GEMM whose n size is n_gemm.
template <typename Launch>
void with_tile_shape(int64_t n_gemm, const Launch& launch) {
  if (n_gemm <= NarrowTile::BN) {
    launch(NarrowTile{});
  } else {
    launch(WideTile{});
  }
}

// A warp's float accumulators: FM x FN fragments of 16 x 16.
template <typename Shape>
struct Accumulators {
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag[Shape::FM][Shape::FN];
};

// Puts 16-bit value e of a thread's register row into the packed pairs.
template <int e>
__device__ __forceinline__ void pack_half(uint32_t* regs, uint16_t v) {
  if constexpr (e % 2 == 0) {
    regs[e / 2] = v;
  } else {
    regs[e / 2] |= static_cast<uint32_t>(v) << 16;
  }
}

__device__ __forceinline__ uint16_t unpack_half(const uint32_t* regs, int e) {
  return static_cast<uint16_t>(regs[e / 2] >> (16 * (e % 2)));
}

// How many of the kElems consecutive reduction indices starting at kk are below
// length (0 when the thread's row does not exist).
template <int kElems, typename T>
__device__ __forceinline__ int run_length(bool row_exists, T length, T kk) {
  if (!row_exists || kk >= length) return 0;
  return length - kk < kElems ? static_cast<int>(length - kk) : kElems;
}

// f(std::integral_constant<int, e>) for e = 0, 1, ...: a loop whose index is a
// compile-time constant in the body.
template <int... e, typename F>
__device__ __forceinline__ void for_each_index(std::integer_sequence<int, e...>, const F& f) {
  (f(std::integral_constant<int, e>{}), ...);
}

// The main loop shared by the three GEMMs: acc = sum over kk in [k_begin,
// k_end) of A[m, kk] B[kk, n] for the block's tile. `operands` loads the tiles:
// fetch(k0) gathers step k0's tiles into registers, stage(a, b) stores them
// into one shared buffer pair. All threads of the block call this.
template <typename Shape, typename TC, typename Operands>
__device__ __forceinline__ void gemm_mainloop(Operands& operands, int64_t k_begin, int64_t k_end,
                                              uint16_t* shared, Accumulators<Shape>& acc) {
  const int warp = threadIdx.x / 32;
  const int warp_m = warp / Shape::kWarpsN, warp_n = warp % Shape::kWarpsN;
#pragma unroll
  for (int fm = 0; fm < Shape::FM; ++fm) {
#pragma unroll
    for (int fn = 0; fn < Shape::FN; ++fn) wmma::fill_fragment(acc.frag[fm][fn], 0.0f);
  }
  const int64_t steps = k_end > k_begin ? ceil_div<int64_t>(k_end - k_begin, Shape::BK) : 0;
  if (steps == 0) return;  // uniform over the block
  uint16_t* a_tiles = shared;                     // [2][BM][kPitch]
  uint16_t* b_tiles = shared + 2 * Shape::kATile;  // [2][BN][kPitch]
  operands.fetch(k_begin);
  operands.stage(a_tiles, b_tiles);
  __syncthreads();
  for (int64_t step = 0; step < steps; ++step) {
    const int buffer = static_cast<int>(step & 1);
    const bool more = step + 1 < steps;  // uniform over the block
    // The next step's global loads are in flight while this step multiplies.
    if (more) operands.fetch(k_begin + (step + 1) * Shape::BK);
    const TC* a = reinterpret_cast<const TC*>(a_tiles + buffer * Shape::kATile) +
                  warp_m * Shape::WM * Shape::kPitch;
    const TC* b = reinterpret_cast<const TC*>(b_tiles + buffer * Shape::kBTile) +
                  warp_n * Shape::WN * Shape::kPitch;
#pragma unroll
    for (int ks = 0; ks < Shape::BK; ks += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, TC, wmma::col_major> b_frag[Shape::FN];
#pragma unroll
      for (int fn = 0; fn < Shape::FN; ++fn) {
        wmma::load_matrix_sync(b_frag[fn], b + fn * 16 * Shape::kPitch + ks, Shape::kPitch);
      }
#pragma unroll
      for (int fm = 0; fm < Shape::FM; ++fm) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, TC, wmma::row_major> a_frag;
        wmma::load_matrix_sync(a_frag, a + fm * 16 * Shape::kPitch + ks, Shape::kPitch);
#pragma unroll
        for (int fn = 0; fn < Shape::FN; ++fn) {
          wmma::mma_sync(acc.frag[fm][fn], a_frag, b_frag[fn], acc.frag[fm][fn]);
        }
      }
    }
    // The other buffer was last read in the previous step, which every thread
    // has finished (the barrier below it).
    if (more) {
      operands.stage(a_tiles + (buffer ^ 1) * Shape::kATile,
                     b_tiles + (buffer ^ 1) * Shape::kBTile);
    }
    __syncthreads();
  }
}

// The block-tile row of the calling lane's x-th epilogue value, x < WM / 32.
template <typename Shape>
__device__ __forceinline__ int epilogue_row(int x) {
  const int warp_m = (threadIdx.x / 32) / Shape::kWarpsN;
  return warp_m * Shape::WM + static_cast<int>(threadIdx.x % 32) + 32 * x;
}

// Hands every accumulator of the block to store(x, n_local, value), where the
// value belongs to block-tile row epilogue_row<Shape>(x) and column n_local.
// `stage` aliases the operand buffers: the main loop ended on a barrier (or
// never touched them). Warps work on private staging slabs, so only warp
// synchronisation is needed.
template <typename Shape, typename Store>
__device__ __forceinline__ void store_accumulators(Accumulators<Shape>& acc, float* stage,
                                                   const Store& store) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_n = warp % Shape::kWarpsN;
  float* slab = stage + warp * Shape::kStageFloats;  // [16 columns][kStagePitch]
#pragma unroll
  for (int fn = 0; fn < Shape::FN; ++fn) {
#pragma unroll
    for (int fm = 0; fm < Shape::FM; ++fm) {
      wmma::store_matrix_sync(slab + fm * 16, acc.frag[fm][fn], Shape::kStagePitch,
                              wmma::mem_col_major);
    }
    __syncwarp();
#pragma unroll 4
    for (int col = 0; col < 16; ++col) {
#pragma unroll
      for (int x = 0; x < Shape::WM / 32; ++x) {
        store(x, warp_n * Shape::WN + fn * 16 + col, slab[col * Shape::kStagePitch + lane + 32 * x]);
      }
    }
    __syncwarp();
  }
}

// ------------------------------------------------------------------ operands

// Stores a thread's run of kElems 16-bit values (packed in pairs) at row `row`,
// reduction offset kk_local of a [rows][kPitch] operand tile: 16-byte stores.
template <typename Shape, int kElems>
__device__ __forceinline__ void stage_run(uint16_t* tile, int row, int kk_local,
                                          const uint32_t (&regs)[kElems / 2]) {
  uint4* dst = reinterpret_cast<uint4*>(tile + row * Shape::kPitch + kk_local);
#pragma unroll
  for (int v = 0; v < kElems / 8; ++v) {
    dst[v] = make_uint4(regs[4 * v], regs[4 * v + 1], regs[4 * v + 2], regs[4 * v + 3]);
  }
}

// B operand of forward and input backward: B[kk, n] = rows[n][kk] for a
// row-major (rows x length) matrix. kThreadsPerRow threads share a row, each
// loading kElems consecutive kk (8 at a time with 16-byte loads when the host
// found every row 16-byte aligned).
template <typename Shape, typename index_t>
struct RowOperand {
  static constexpr int kThreadsPerRow = Shape::kThreads / Shape::BN;
  static constexpr int kElems = Shape::BK / kThreadsPerRow;
  static_assert(Shape::kThreads % Shape::BN == 0 && kElems % 8 == 0);

  const uint16_t* row;  // null past the last row
  int64_t length;
  int n_local, kk_local;
  bool vector;
  uint32_t regs[kElems / 2];

  __device__ RowOperand(const uint16_t* matrix, int64_t rows, int64_t length, int64_t n0,
                        bool vector)
      : length(length),
        n_local(threadIdx.x / kThreadsPerRow),
        kk_local((threadIdx.x % kThreadsPerRow) * kElems),
        vector(vector) {
    const int64_t n = n0 + n_local;
    row = n < rows ? matrix + static_cast<index_t>(n) * static_cast<index_t>(length) : nullptr;
  }

  __device__ __forceinline__ void fetch(int64_t k0) {
    const int64_t kk = k0 + kk_local;
    // Elements [0, valid) of this thread's run exist.
    const int valid = run_length<kElems>(row != nullptr, length, kk);
    if (vector) {  // length % 8 == 0, so a chunk of 8 is all in or all out
#pragma unroll
      for (int v = 0; v < kElems / 8; ++v) {
        uint4 chunk = make_uint4(0, 0, 0, 0);
        if (8 * v < valid) chunk = __ldg(reinterpret_cast<const uint4*>(row + kk + 8 * v));
        regs[4 * v] = chunk.x;
        regs[4 * v + 1] = chunk.y;
        regs[4 * v + 2] = chunk.z;
        regs[4 * v + 3] = chunk.w;
      }
    } else {
      for_each_index(std::make_integer_sequence<int, kElems>{}, [&](auto e) {
        const uint16_t v = e < valid ? __ldg(row + kk + e) : uint16_t{0};
        pack_half<decltype(e)::value>(regs, v);
      });
    }
  }

  __device__ __forceinline__ void stage(uint16_t* tile) const {
    stage_run<Shape, kElems>(tile, n_local, kk_local, regs);
  }
};

// The A operand of forward and input backward: row m is one pixel, the
// reduction index kk = (r, s, channel) runs over the taps with the channel
// fastest (the weight rows are permuted to match on the host). Each thread
// stays on one m (consecutive threads on consecutive m: consecutive pixels)
// and gathers kElems consecutive kk. The pass (Derived) says where a tap
// reads: Derived::tap(rs) is the offset in `source` (at channel 0) of the
// value that row m reads through tap rs = (r, s), or -1 where it reads zero.
// kOneTapPerRun: the channel count is a multiple of kElems, so the run shares
// one tap: one tap() per step, then one load per channel plane.
template <typename Derived, typename Shape, typename index_t, bool kOneTapPerRun>
struct TapGatherOperand {
  static constexpr int kThreadsPerRow = Shape::kThreads / Shape::BM;
  static constexpr int kElems = Shape::BK / kThreadsPerRow;
  static_assert(Shape::kThreads % Shape::BM == 0 && kElems % 8 == 0);

  const uint16_t* source;  // row m's sample at the group's first channel; null past the last m
  uint32_t length;         // R*S*channels (< 2^31 - 64, checked on the host)
  index_t plane;           // elements between consecutive channels of `source`
  Divider<int32_t> channels;  // channels of the group (the fastest part of kk)
  int m_local, kk_local;
  uint32_t regs[kElems / 2];

  __device__ TapGatherOperand(int64_t length, int64_t plane, const Divider<int32_t>& channels)
      : source(nullptr),
        length(static_cast<uint32_t>(length)),
        plane(static_cast<index_t>(plane)),
        channels(channels),
        m_local(threadIdx.x % Shape::BM),
        kk_local((threadIdx.x / Shape::BM) * kElems) {}

  __device__ __forceinline__ index_t tap(uint32_t rs) const {
    return static_cast<const Derived&>(*this).tap(rs);
  }

  __device__ __forceinline__ void fetch(int64_t k0) {
    const uint32_t kk = static_cast<uint32_t>(k0) + kk_local;
    const uint32_t rs = channels.div(kk);
    uint32_t c = kk - rs * channels.value;
    if constexpr (kOneTapPerRun) {
      // kk and length are multiples of kElems: the run is all in or all out.
      const index_t at = kk < length ? tap(rs) : index_t{-1};
      const bool inside = at >= 0;
      index_t offset = at + static_cast<index_t>(c) * plane;
      for_each_index(std::make_integer_sequence<int, kElems>{}, [&](auto e) {
        const uint16_t v = inside ? __ldg(source + offset) : uint16_t{0};
        pack_half<decltype(e)::value>(regs, v);
        offset += plane;
      });
    } else {
      const int valid = run_length<kElems>(source != nullptr, length, kk);
      uint32_t tap_rs = rs;
      index_t at = tap(tap_rs);
      for_each_index(std::make_integer_sequence<int, kElems>{}, [&](auto e) {
        uint16_t v = 0;
        if (e < valid && at >= 0) v = __ldg(source + at + static_cast<index_t>(c) * plane);
        pack_half<decltype(e)::value>(regs, v);
        if (++c == static_cast<uint32_t>(channels.value)) {  // next tap
          c = 0;
          at = tap(++tap_rs);
        }
      });
    }
  }

  __device__ __forceinline__ void stage(uint16_t* tile) const {
    stage_run<Shape, kElems>(tile, m_local, kk_local, regs);
  }
};

// A operand of the forward GEMM: A[m, kk] = X[n, g*Cg + c, ih, iw] with m the
// phase's output pixel (n, i, j) and kk = (r, s, c); zero on padding.
template <typename Shape, typename index_t, bool kOneTapPerRun>
struct PatchOperand
    : TapGatherOperand<PatchOperand<Shape, index_t, kOneTapPerRun>, Shape, index_t,
                       kOneTapPerRun> {
  Divider<int32_t> taps_per_row;  // S
  int H, W, dilation_h, dilation_w;
  int ih0, iw0;  // input location of tap (0, 0)

  __device__ PatchOperand(const uint16_t* input, const Conv2dProblem& pb, const ConvPhase& ph,
                          const Divider<int32_t>& channels, const Divider<int32_t>& taps_per_row,
                          int64_t g, int64_t m0)
      : PatchOperand::TapGatherOperand(pb.patch_size(), pb.H * pb.W, channels),
        taps_per_row(taps_per_row),
        H(static_cast<int>(pb.H)),
        W(static_cast<int>(pb.W)),
        dilation_h(static_cast<int>(pb.dilation_h)),
        dilation_w(static_cast<int>(pb.dilation_w)),
        ih0(0),
        iw0(0) {
    const int64_t m = m0 + this->m_local, pixels = ph.P_a * ph.Q_b;
    if (m < pb.N * pixels) {
      const int64_t n = m / pixels, rest = m - n * pixels;
      const int64_t i = rest / ph.Q_b, j = rest - i * ph.Q_b;
      ih0 = static_cast<int>(pb.input_row(ph.a + i * pb.tile_h, 0));
      iw0 = static_cast<int>(pb.input_col(ph.b + j * pb.tile_w, 0));
      this->source =
          input + static_cast<index_t>(n * pb.C + g * pb.group_in_channels()) * this->plane;
    }
  }

  // Offset in `source` of the input pixel read through tap rs = (r, s) at
  // channel 0, or -1 when it is padding (or the thread has no row).
  __device__ __forceinline__ index_t tap(uint32_t rs) const {
    const uint32_t r = taps_per_row.div(rs), s = rs - r * taps_per_row.value;
    const int ih = ih0 + static_cast<int>(r) * dilation_h;
    const int iw = iw0 + static_cast<int>(s) * dilation_w;
    const bool inside = static_cast<unsigned>(ih) < static_cast<unsigned>(H) &&
                        static_cast<unsigned>(iw) < static_cast<unsigned>(W);
    return this->source != nullptr && inside ? static_cast<index_t>(ih) * W + iw : index_t{-1};
  }
};

// The phase index i with num == i * step, 0 <= i < count, or -1 when num is
// not such a multiple (the tap does not come from an output location of the phase).
__device__ __forceinline__ int phase_index(int num, const Divider<int32_t>& step, int count) {
  if (num < 0) return -1;
  const int i = static_cast<int>(step.div(static_cast<uint32_t>(num)));
  return (i * static_cast<int>(step.value) == num && i < count) ? i : -1;
}

// A operand of the input-backward GEMM: A[m, kk] = G[n, g*Kg + k, p, q] with m
// the input pixel (n, h, w) and kk = (r, s, k), where (p, q) is the output
// location of the phase that reads (h, w) through tap (r, s):
// p*stride_h - pad_h + r*dil_h = h with p = a + i*tile_h, i.e.
// i*(stride_h*tile_h) = h + pad_h - a*stride_h - r*dil_h; zero where no
// integer i in [0, P_a) exists (likewise for columns).
template <typename Shape, typename index_t, bool kOneTapPerRun>
struct OutputGradOperand
    : TapGatherOperand<OutputGradOperand<Shape, index_t, kOneTapPerRun>, Shape, index_t,
                       kOneTapPerRun> {
  Divider<int32_t> taps_per_row;    // S
  Divider<int32_t> step_h, step_w;  // stride * tile: output rows (columns) between phase rows
  int Q, dilation_h, dilation_w;
  int a, b, tile_h, tile_w, P_a, Q_b;
  int row_num0, col_num0;  // h + pad_h - a*stride_h and w + pad_w - b*stride_w

  __device__ OutputGradOperand(const uint16_t* grad_output, const Conv2dProblem& pb,
                               const ConvPhase& ph, const Divider<int32_t>& channels,
                               const Divider<int32_t>& taps_per_row, const Divider<int32_t>& step_h,
                               const Divider<int32_t>& step_w, int64_t g, int64_t m0)
      : OutputGradOperand::TapGatherOperand(pb.R * pb.S * pb.group_out_channels(), pb.P * pb.Q,
                                            channels),
        taps_per_row(taps_per_row),
        step_h(step_h),
        step_w(step_w),
        Q(static_cast<int>(pb.Q)),
        dilation_h(static_cast<int>(pb.dilation_h)),
        dilation_w(static_cast<int>(pb.dilation_w)),
        a(static_cast<int>(ph.a)),
        b(static_cast<int>(ph.b)),
        tile_h(static_cast<int>(pb.tile_h)),
        tile_w(static_cast<int>(pb.tile_w)),
        P_a(static_cast<int>(ph.P_a)),
        Q_b(static_cast<int>(ph.Q_b)),
        row_num0(0),
        col_num0(0) {
    const int64_t m = m0 + this->m_local, pixels = pb.H * pb.W;
    if (m < pb.N * pixels) {
      const int64_t n = m / pixels, rest = m - n * pixels;
      const int64_t h = rest / pb.W, w = rest - h * pb.W;
      row_num0 = static_cast<int>(h + pb.pad_h - ph.a * pb.stride_h);
      col_num0 = static_cast<int>(w + pb.pad_w - ph.b * pb.stride_w);
      this->source =
          grad_output + static_cast<index_t>(n * pb.K + g * pb.group_out_channels()) * this->plane;
    }
  }

  // Offset p*Q + q in `source` (channel 0) of the output location whose tap
  // rs = (r, s) reads this thread's input pixel, or -1 when there is none in the phase.
  __device__ __forceinline__ index_t tap(uint32_t rs) const {
    const uint32_t r = taps_per_row.div(rs), s = rs - r * taps_per_row.value;
    const int i = phase_index(row_num0 - static_cast<int>(r) * dilation_h, step_h, P_a);
    const int j = phase_index(col_num0 - static_cast<int>(s) * dilation_w, step_w, Q_b);
    return this->source != nullptr && i >= 0 && j >= 0
               ? static_cast<index_t>(a + i * tile_h) * Q + (b + j * tile_w)
               : index_t{-1};
  }
};

// multiply(std::true_type) when every run of kElems consecutive kk shares one
// tap (the channel count is a multiple of kElems), else multiply(std::false_type).
template <int kElems, typename Multiply>
__device__ __forceinline__ void with_one_tap_per_run(int64_t channels, const Multiply& multiply) {
  if (channels % kElems == 0) {
    multiply(std::true_type{});
  } else {
    multiply(std::false_type{});
  }
}

template <typename AOperand, typename BOperand>
struct OperandPair {
  AOperand a;
  BOperand b;
  __device__ __forceinline__ void fetch(int64_t k0) {
    a.fetch(k0);
    b.fetch(k0);
  }
  __device__ __forceinline__ void stage(uint16_t* a_tile, uint16_t* b_tile) const {
    a.stage(a_tile);
    b.stage(b_tile);
  }
};

// ------------------------------------------------------------------ forward

template <typename scalar_t>
struct ForwardArgs {
  const uint16_t* input;    // (N, C, H, W)
  const uint16_t* weight;   // (G, Kg, R*S*Cg): W[g][k][(c, r, s)] at [g][k][(r, s, c)]
  const scalar_t* bias;     // (K,), or (K, P, Q) when pb.untied_bias; or null
  scalar_t* output;         // (N, K, P, Q)
  Conv2dProblem pb;
  ConvPhase phase;
  Divider<int32_t> channels, taps_per_row;  // Cg, S
  int64_t n_tiles, group_offset;
  bool vector_weights;      // weight rows 16-byte aligned
};

template <typename scalar_t, typename Shape, typename index_t>
__global__ void __launch_bounds__(Shape::kThreads, 2)
    conv_forward_tc_kernel(const ForwardArgs<scalar_t> args) {
  using TC = typename TensorCoreElement<scalar_t>::type;
  __shared__ __align__(128) unsigned char shared[Shape::kSharedBytes];
  const Conv2dProblem& pb = args.pb;
  const ConvPhase& ph = args.phase;
  const int64_t g = args.group_offset + blockIdx.z;
  const int64_t Kg = pb.group_out_channels();
  const int64_t m0 = static_cast<int64_t>(blockIdx.x / args.n_tiles) * Shape::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x % args.n_tiles) * Shape::BN;

  Accumulators<Shape> acc;
  const auto multiply = [&](auto one_tap_per_run) {
    using Patches = PatchOperand<Shape, index_t, decltype(one_tap_per_run)::value>;
    OperandPair<Patches, RowOperand<Shape, index_t>> operands{
        Patches(args.input, pb, ph, args.channels, args.taps_per_row, g, m0),
        RowOperand<Shape, index_t>(args.weight + static_cast<index_t>(g * Kg * pb.patch_size()),
                                   Kg, pb.patch_size(), n0, args.vector_weights)};
    gemm_mainloop<Shape, TC>(operands, 0, pb.patch_size(), reinterpret_cast<uint16_t*>(shared),
                             acc);
  };
  with_one_tap_per_run<PatchOperand<Shape, index_t, true>::kElems>(pb.group_in_channels(),
                                                                    multiply);

  // Output offset of (n, 0, p, q) for each of the lane's rows, -1 past the
  // last m, and its pixel p*Q + q (an untied bias's offset in channel 0).
  const int64_t pixels = ph.P_a * ph.Q_b;
  const index_t plane = static_cast<index_t>(pb.P * pb.Q);
  index_t out_row[Shape::WM / 32], pixel[Shape::WM / 32];
#pragma unroll
  for (int x = 0; x < Shape::WM / 32; ++x) {
    const int64_t m = m0 + epilogue_row<Shape>(x);
    out_row[x] = -1;
    pixel[x] = 0;
    if (m < pb.N * pixels) {
      const int64_t n = m / pixels, rest = m - n * pixels;
      const int64_t i = rest / ph.Q_b, j = rest - i * ph.Q_b;
      const int64_t pq = (ph.a + i * pb.tile_h) * pb.Q + ph.b + j * pb.tile_w;
      out_row[x] = static_cast<index_t>((n * pb.K) * pb.P * pb.Q + pq);
      pixel[x] = static_cast<index_t>(pq);
    }
  }
  scalar_t* output = args.output;
  const scalar_t* bias = args.bias;
  const bool untied_bias = pb.untied_bias;
  store_accumulators<Shape>(acc, reinterpret_cast<float*>(shared),
                            [&](int x, int n_local, float value) {
                              const int64_t n = n0 + n_local;
                              if (out_row[x] < 0 || n >= Kg) return;
                              const index_t k = static_cast<index_t>(g * Kg + n);
                              if (bias != nullptr) {
                                value += static_cast<float>(
                                    bias[untied_bias ? k * plane + pixel[x] : k]);
                              }
                              output[out_row[x] + k * plane] = static_cast<scalar_t>(value);
                            });
}

// ------------------------------------------------------------------ input backward

template <typename scalar_t>
struct InputBackwardArgs {
  const uint16_t* grad_output;  // (N, K, P, Q)
  const uint16_t* weight_t;     // (G, Cg, R*S*Kg): W[g][k][(c, r, s)] at [g][c][(r, s, k)]
  float* grad_input;            // (N, C, H, W), accumulated into
  Conv2dProblem pb;
  ConvPhase phase;
  Divider<int32_t> channels, taps_per_row, step_h, step_w;  // Kg, S, stride*tile (rows, columns)
  int64_t n_tiles, group_offset;
  bool vector_weights;          // weight_t rows 16-byte aligned
};

template <typename scalar_t, typename Shape, typename index_t>
__global__ void __launch_bounds__(Shape::kThreads, 2)
    conv_input_backward_tc_kernel(const InputBackwardArgs<scalar_t> args) {
  using TC = typename TensorCoreElement<scalar_t>::type;
  __shared__ __align__(128) unsigned char shared[Shape::kSharedBytes];
  const Conv2dProblem& pb = args.pb;
  const int64_t g = args.group_offset + blockIdx.z;
  const int64_t Cg = pb.group_in_channels();
  const int64_t reduction = pb.group_out_channels() * pb.R * pb.S;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x / args.n_tiles) * Shape::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x % args.n_tiles) * Shape::BN;

  Accumulators<Shape> acc;
  const auto multiply = [&](auto one_tap_per_run) {
    using Gradients = OutputGradOperand<Shape, index_t, decltype(one_tap_per_run)::value>;
    OperandPair<Gradients, RowOperand<Shape, index_t>> operands{
        Gradients(args.grad_output, pb, args.phase, args.channels, args.taps_per_row, args.step_h,
                  args.step_w, g, m0),
        RowOperand<Shape, index_t>(args.weight_t + static_cast<index_t>(g * Cg * reduction), Cg,
                                   reduction, n0, args.vector_weights)};
    gemm_mainloop<Shape, TC>(operands, 0, reduction, reinterpret_cast<uint16_t*>(shared), acc);
  };
  with_one_tap_per_run<OutputGradOperand<Shape, index_t, true>::kElems>(pb.group_out_channels(),
                                                                         multiply);

  // grad_input offset of (n, 0, h, w) for each of the lane's rows, -1 past the last m.
  const int64_t pixels = pb.H * pb.W;
  const index_t plane = static_cast<index_t>(pixels);
  index_t in_row[Shape::WM / 32];
#pragma unroll
  for (int x = 0; x < Shape::WM / 32; ++x) {
    const int64_t m = m0 + epilogue_row<Shape>(x);
    in_row[x] = -1;
    if (m < pb.N * pixels) {
      const int64_t n = m / pixels;
      in_row[x] = static_cast<index_t>(n * pb.C * pixels + (m - n * pixels));
    }
  }
  float* grad_input = args.grad_input;
  store_accumulators<Shape>(acc, reinterpret_cast<float*>(shared),
                            [&](int x, int n_local, float value) {
                              const int64_t c = n0 + n_local;
                              if (in_row[x] < 0 || c >= Cg) return;
                              grad_input[in_row[x] + static_cast<index_t>(g * Cg + c) * plane] +=
                                  value;
                            });
}

// ------------------------------------------------------------------ weight backward

template <typename scalar_t>
struct WeightBackwardArgs {
  const uint16_t* grad_output;  // (N, K, P, Q)
  const uint16_t* input;        // (N, C, H, W)
  float* partial;               // (slices, G, Kg, Cg*R*S)
  Conv2dProblem pb;
  ConvPhase phase;
  Divider<int32_t> phase_pixels, phase_columns;  // P_a*Q_b, Q_b
  int64_t n_tiles, group_offset, steps_per_slice;
};

// Both operands of the weight-backward GEMM, with the reduction index
// kk = (n, i, j) on the lanes: lane l of every warp handles kk = k0 + l (one
// division per step), warp w handles the tile rows w, w + 8, w + 16, ...
//   A[(c, r, s), kk] = X[n, g*Cg + c, ih, iw]   (the (c, r, s) of each A row
//                                                come from the block's table)
//   B[kk, k]         = G[n, g*Kg + k, p, q]
template <typename index_t>
struct alignas(16) PatchRow {
  index_t offset;  // c*H*W + r*dil_h*W + s*dil_w, or -1 past the last (c, r, s)
  int dh, dw;      // r*dil_h, s*dil_w
};

template <typename Shape, typename index_t>
struct WeightGradOperands {
  static constexpr int kAElems = Shape::BM / Shape::kWarps;
  static constexpr int kBElems = Shape::BN / Shape::kWarps;

  const uint16_t* input;       // X at (sample 0, the group's first channel)
  const uint16_t* grad;        // G at (sample 0, the block tile's first channel n0 of the group)
  const PatchRow<index_t>* rows;  // the block's A rows
  int64_t reduction;           // N*P_a*Q_b
  Divider<int32_t> phase_pixels;             // P_a*Q_b
  Divider<int32_t> phase_columns;            // Q_b
  index_t in_sample, out_sample, out_plane;  // C*H*W, K*P*Q, P*Q
  // Phase pixel (i, j) reads input rows from ih0 = row_origin + i*row_step
  // (columns likewise) and sits at grad offset grad_origin + i*grad_row_step + j*tile_w.
  int row_origin, row_step, col_origin, col_step;
  int grad_origin, grad_row_step, tile_w;
  int H, W;
  int k_rows;  // rows of B that exist in this block: min(BN, Kg - n0)
  int warp, lane;
  uint32_t a_regs[kAElems / 2], b_regs[kBElems / 2];  // 16-bit values packed in pairs

  __device__ WeightGradOperands(const uint16_t* input_group, const uint16_t* grad_group,
                                const PatchRow<index_t>* rows, const Conv2dProblem& pb,
                                const ConvPhase& ph, const Divider<int32_t>& phase_pixels,
                                const Divider<int32_t>& phase_columns, int64_t n0)
      : input(input_group),
        grad(grad_group),
        rows(rows),
        reduction(pb.N * ph.P_a * ph.Q_b),
        phase_pixels(phase_pixels),
        phase_columns(phase_columns),
        in_sample(static_cast<index_t>(pb.C * pb.H * pb.W)),
        out_sample(static_cast<index_t>(pb.K * pb.P * pb.Q)),
        out_plane(static_cast<index_t>(pb.P * pb.Q)),
        row_origin(static_cast<int>(pb.input_row(ph.a, 0))),
        row_step(static_cast<int>(pb.tile_h * pb.stride_h)),
        col_origin(static_cast<int>(pb.input_col(ph.b, 0))),
        col_step(static_cast<int>(pb.tile_w * pb.stride_w)),
        grad_origin(static_cast<int>(ph.a * pb.Q + ph.b)),
        grad_row_step(static_cast<int>(pb.tile_h * pb.Q)),
        tile_w(static_cast<int>(pb.tile_w)),
        H(static_cast<int>(pb.H)),
        W(static_cast<int>(pb.W)),
        k_rows(static_cast<int>(std::min<int64_t>(Shape::BN, pb.group_out_channels() - n0))),
        warp(static_cast<int>(threadIdx.x / 32)),
        lane(static_cast<int>(threadIdx.x % 32)) {}

  __device__ __forceinline__ void fetch(int64_t k0) {
    const int64_t kk = k0 + lane;
    const uint16_t* image = nullptr;    // X at (n, group's first channel, ih0, iw0)
    const uint16_t* grad_at = nullptr;  // G at (n, group's first channel, p, q)
    int ih0 = 0, iw0 = 0;               // input location of tap (0, 0)
    if (kk < reduction) {
      // kk = (n, i, j); with 32-bit indices kk < 2^31 suits the fast divider.
      index_t n;
      uint32_t rest;
      if constexpr (std::is_same_v<index_t, int32_t>) {
        const uint32_t quotient = phase_pixels.div(static_cast<uint32_t>(kk));
        n = static_cast<index_t>(quotient);
        rest = static_cast<uint32_t>(kk) - quotient * phase_pixels.value;
      } else {
        n = kk / phase_pixels.value;
        rest = static_cast<uint32_t>(kk - n * phase_pixels.value);
      }
      const int i = static_cast<int>(phase_columns.div(rest));
      const int j = static_cast<int>(rest) - i * static_cast<int>(phase_columns.value);
      ih0 = row_origin + i * row_step;
      iw0 = col_origin + j * col_step;
      image = input + n * in_sample + (static_cast<index_t>(ih0) * W + iw0);
      grad_at = grad + n * out_sample +
                (grad_origin + static_cast<index_t>(i) * grad_row_step + j * tile_w);
    }
    for_each_index(std::make_integer_sequence<int, kAElems>{}, [&](auto e) {
      const PatchRow<index_t> row = rows[warp + Shape::kWarps * decltype(e)::value];
      const int ih = ih0 + row.dh, iw = iw0 + row.dw;
      uint16_t v = 0;
      if (image != nullptr && row.offset >= 0 &&
          static_cast<unsigned>(ih) < static_cast<unsigned>(H) &&
          static_cast<unsigned>(iw) < static_cast<unsigned>(W)) {
        v = __ldg(image + row.offset);
      }
      pack_half<decltype(e)::value>(a_regs, v);
    });
    for_each_index(std::make_integer_sequence<int, kBElems>{}, [&](auto e) {
      const int k = warp + Shape::kWarps * decltype(e)::value;  // B row within the block tile
      const uint16_t v = (grad_at != nullptr && k < k_rows)
                             ? __ldg(grad_at + static_cast<index_t>(k) * out_plane)
                             : uint16_t{0};
      pack_half<decltype(e)::value>(b_regs, v);
    });
  }

  __device__ __forceinline__ void stage(uint16_t* a_tile, uint16_t* b_tile) const {
#pragma unroll
    for (int e = 0; e < kAElems; ++e) {
      a_tile[(warp + Shape::kWarps * e) * Shape::kPitch + lane] = unpack_half(a_regs, e);
    }
#pragma unroll
    for (int e = 0; e < kBElems; ++e) {
      b_tile[(warp + Shape::kWarps * e) * Shape::kPitch + lane] = unpack_half(b_regs, e);
    }
  }
};

template <typename scalar_t, typename Shape, typename index_t>
__global__ void __launch_bounds__(Shape::kThreads, 2)
    conv_weight_backward_tc_kernel(const WeightBackwardArgs<scalar_t> args) {
  using TC = typename TensorCoreElement<scalar_t>::type;
  __shared__ __align__(128) unsigned char shared[Shape::kSharedBytes];
  __shared__ PatchRow<index_t> rows[Shape::BM];
  const Conv2dProblem& pb = args.pb;
  const ConvPhase& ph = args.phase;
  const int64_t g = args.group_offset + blockIdx.z, slice = blockIdx.y;
  const int64_t Kg = pb.group_out_channels(), Cg = pb.group_in_channels();
  const int64_t patch = pb.patch_size(), RS = pb.R * pb.S;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x / args.n_tiles) * Shape::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x % args.n_tiles) * Shape::BN;

  // The (c, r, s) of the tile's rows, decomposed once for the whole reduction.
  const index_t in_plane = static_cast<index_t>(pb.H * pb.W);
  for (int row = threadIdx.x; row < Shape::BM; row += Shape::kThreads) {
    const int64_t m = m0 + row;
    const int64_t c = m / RS, rs = m - c * RS, r = rs / pb.S, s = rs - r * pb.S;
    const int dh = static_cast<int>(r * pb.dilation_h), dw = static_cast<int>(s * pb.dilation_w);
    rows[row].offset = m < patch ? static_cast<index_t>(c) * in_plane + static_cast<index_t>(dh) * pb.W + dw
                                 : index_t{-1};
    rows[row].dh = dh;
    rows[row].dw = dw;
  }
  __syncthreads();

  WeightGradOperands<Shape, index_t> operands(
      args.input + static_cast<index_t>(g * Cg) * in_plane,
      args.grad_output + static_cast<index_t>((g * Kg + n0) * pb.P * pb.Q), rows, pb, ph,
      args.phase_pixels, args.phase_columns, n0);
  const int64_t reduction = pb.N * ph.P_a * ph.Q_b;
  const int64_t k_begin = slice * args.steps_per_slice * Shape::BK;
  const int64_t k_end = std::min(reduction, k_begin + args.steps_per_slice * Shape::BK);
  Accumulators<Shape> acc;
  gemm_mainloop<Shape, TC>(operands, k_begin, k_end, reinterpret_cast<uint16_t*>(shared), acc);

  float* partial = args.partial + static_cast<index_t>((slice * pb.groups + g) * Kg * patch);
  store_accumulators<Shape>(acc, reinterpret_cast<float*>(shared),
                            [&](int x, int n_local, float value) {
                              const int64_t m = m0 + epilogue_row<Shape>(x), k = n0 + n_local;
                              if (m >= patch || k >= Kg) return;
                              partial[static_cast<index_t>(k * patch + m)] = value;
                            });
}

// grad_weight[e] = sum of partial[s][e] over the slices s in order.
template <typename scalar_t>
__global__ void sum_slices_kernel(const float* partial, int64_t slices, int64_t count,
                                  scalar_t* grad_weight) {
  CNNKIT_KERNEL_LOOP(e, count) {
    float sum = 0.0f;
    for (int64_t s = 0; s < slices; ++s) sum += partial[s * count + e];
    grad_weight[e] = static_cast<scalar_t>(sum);
  }
}

// ------------------------------------------------------------------ host side

// Weight-gradient split: about kTargetBlocks blocks in all, at most kMaxSlices
// slices, each at least kMinStepsPerSlice reduction steps long. Depends on the
// problem's shape only, so the summation order (and result) is the same on
// every device and run.
constexpr int64_t kTargetBlocks = 512;
constexpr int64_t kMaxSlices = 32;
constexpr int64_t kMinStepsPerSlice = 16;
constexpr int64_t kMaxGridZ = 65535;
// The largest reduction length (forward, input backward) or image plane the
// kernels' 32-bit index math takes, with room for the last step's overhang.
constexpr int64_t kMaxIndex32 = std::numeric_limits<int32_t>::max() - 64;

// What every tensor-core kernel assumes: a 16-bit dtype, and image planes of
// fewer than 2^31 pixels (coordinates and per-plane divisions are 32-bit).
void check_tensor_core_problem(const Conv2dProblem& pb, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, pb.op,
              ": the tensor-core convolution kernels take torch.float16 or torch.bfloat16, "
              "but got ",
              dtype_name(t.scalar_type()));
  TORCH_CHECK(pb.H * pb.W <= kMaxIndex32 && pb.P * pb.Q <= kMaxIndex32, pb.op,
              ": image planes too large for the tensor-core kernels (", pb.H, "x", pb.W, " input, ",
              pb.P, "x", pb.Q, " output)");
}

template <typename T>
const uint16_t* raw_bits(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.const_data_ptr<T>());
}

// Whether every row of a contiguous (rows, length) matrix of 16-bit values
// starts on a 16-byte boundary.
bool rows_aligned_16(const at::Tensor& t, int64_t length) {
  return length % 8 == 0 && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

unsigned int tile_blocks(const char* op, int64_t m_size, int64_t n_tiles, int64_t bm) {
  const int64_t blocks = ceil_div<int64_t>(m_size, bm) * n_tiles;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), op,
              ": convolution too large for the tensor-core kernels (", blocks, " tiles)");
  return static_cast<unsigned int>(blocks);
}

// Launches kernel_for(index_t{}) (the kernel instantiated for the index type
// that index32 allows) over the tiles of an m_size x (args.n_tiles * BN) GEMM
// in x, `slices` reduction slices in y and the groups in z, in chunks of groups
// that fit gridDim.z (args.group_offset numbers the chunk's first group).
template <typename Shape, typename Args, typename KernelFor>
void launch_tiles(Args& args, int64_t m_size, int64_t groups, unsigned int slices, bool index32,
                  const KernelFor& kernel_for) {
  const unsigned int blocks = tile_blocks(args.pb.op, m_size, args.n_tiles, Shape::BM);
  CNNKIT_DISPATCH_INDEX(index32, [&] {
    const auto kernel = kernel_for(index_t{});
    for (int64_t g0 = 0; g0 < groups; g0 += kMaxGridZ) {
      args.group_offset = g0;
      const auto count = static_cast<unsigned int>(std::min(kMaxGridZ, groups - g0));
      CNNKIT_LAUNCH(dim3(blocks, slices, count), Shape::kThreads, 0, current_stream(),
                    kernel)(args);
      CNNKIT_CHECK_LAUNCH();
    }
  });
}

}  // namespace

void forward_phase(const Conv2dProblem& pb, int64_t t, const at::Tensor& input,
                   const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output) {
  check_tensor_core_problem(pb, input);
  DeviceScope scope(input);
  const ConvPhase phase = conv_phase(pb, t);
  const int64_t M = pb.N * phase.P_a * phase.Q_b, Kg = pb.group_out_channels();
  if (M == 0 || Kg == 0) return;
  TORCH_INTERNAL_ASSERT(output.is_contiguous() && output.scalar_type() == input.scalar_type() &&
                        output.numel() == pb.N * pb.K * pb.P * pb.Q);
  TORCH_INTERNAL_ASSERT(!bias.defined() ||
                        (bias.scalar_type() == input.scalar_type() &&
                         bias.numel() == (pb.untied_bias ? pb.K * pb.P * pb.Q : pb.K)));
  TORCH_CHECK(pb.patch_size() <= kMaxIndex32, pb.op,
              ": convolution patch too large for the tensor-core kernels (C/groups*R*S = ",
              pb.patch_size(), ")");
  const int64_t Cg = pb.group_in_channels(), RS = pb.R * pb.S;
  const auto x = input.contiguous();
  // W[g][k][(c, r, s)] -> W'[g][k][(r, s, c)]: the B rows in the GEMM's reduction order.
  const auto w = weight.contiguous().view({pb.groups, Kg, Cg, RS}).permute({0, 1, 3, 2}).contiguous();
  const auto b = bias.defined() ? bias.contiguous() : at::Tensor();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(input.scalar_type(), "cnnkit_conv_forward_tensor_core", [&] {
    ForwardArgs<scalar_t> args{raw_bits<scalar_t>(x),
                               raw_bits<scalar_t>(w),
                               b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                               output.mutable_data_ptr<scalar_t>(),
                               pb,
                               phase,
                               Divider<int32_t>(std::max<int64_t>(Cg, 1)),  // unused when Cg = 0
                               Divider<int32_t>(pb.S),
                               0,
                               0,
                               rows_aligned_16(w, pb.patch_size())};
    with_tile_shape(Kg, [&](auto shape) {
      using Shape = decltype(shape);
      args.n_tiles = ceil_div<int64_t>(Kg, Shape::BN);
      launch_tiles<Shape>(args, M, pb.groups, 1, fits_int32({x.numel(), w.numel(), output.numel()}),
                          [](auto index) {
                            return conv_forward_tc_kernel<scalar_t, Shape, decltype(index)>;
                          });
    });
  });
}

void input_backward_phase(const Conv2dProblem& pb, int64_t t, const at::Tensor& grad_output,
                          const at::Tensor& weight, at::Tensor& grad_input_acc) {
  check_tensor_core_problem(pb, grad_output);
  DeviceScope scope(grad_output);
  const ConvPhase phase = conv_phase(pb, t);
  const int64_t M = pb.N * pb.H * pb.W, Cg = pb.group_in_channels();
  const int64_t Kg = pb.group_out_channels(), reduction = Kg * pb.R * pb.S;
  if (M == 0 || Cg == 0 || reduction == 0 || phase.P_a * phase.Q_b == 0) return;
  TORCH_INTERNAL_ASSERT(grad_input_acc.is_contiguous() &&
                        grad_input_acc.scalar_type() == at::kFloat &&
                        grad_input_acc.numel() == pb.N * pb.C * pb.H * pb.W);
  TORCH_CHECK(reduction <= kMaxIndex32, pb.op,
              ": convolution too large for the tensor-core kernels (K/groups*R*S = ", reduction,
              ")");
  const auto go = grad_output.contiguous();
  // W[g][k][(c, r, s)] -> W_t[g][c][(r, s, k)]: the B rows in the GEMM's reduction order.
  const auto w_t = weight.contiguous()
                       .view({pb.groups, Kg, Cg, pb.R * pb.S})
                       .permute({0, 2, 3, 1})
                       .contiguous();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(
      grad_output.scalar_type(), "cnnkit_conv_input_backward_tensor_core", [&] {
        InputBackwardArgs<scalar_t> args{raw_bits<scalar_t>(go),
                                         raw_bits<scalar_t>(w_t),
                                         grad_input_acc.mutable_data_ptr<float>(),
                                         pb,
                                         phase,
                                         Divider<int32_t>(Kg),
                                         Divider<int32_t>(pb.S),
                                         Divider<int32_t>(pb.stride_h * pb.tile_h),
                                         Divider<int32_t>(pb.stride_w * pb.tile_w),
                                         0,
                                         0,
                                         rows_aligned_16(w_t, reduction)};
        with_tile_shape(Cg, [&](auto shape) {
          using Shape = decltype(shape);
          args.n_tiles = ceil_div<int64_t>(Cg, Shape::BN);
          launch_tiles<Shape>(
              args, M, pb.groups, 1, fits_int32({go.numel(), w_t.numel(), grad_input_acc.numel()}),
              [](auto index) {
                return conv_input_backward_tc_kernel<scalar_t, Shape, decltype(index)>;
              });
        });
      });
}

void weight_backward_phase(const Conv2dProblem& pb, int64_t t, const at::Tensor& grad_output,
                           const at::Tensor& input, at::Tensor& grad_weight) {
  check_tensor_core_problem(pb, input);
  DeviceScope scope(input);
  TORCH_INTERNAL_ASSERT(grad_weight.is_contiguous() &&
                        grad_weight.scalar_type() == input.scalar_type() &&
                        grad_weight.numel() == pb.K * pb.patch_size());
  if (grad_weight.numel() == 0) return;
  const ConvPhase phase = conv_phase(pb, t);
  const int64_t reduction = pb.N * phase.P_a * phase.Q_b;
  if (reduction == 0) {  // no output location in this phase: the gradient is zero
    grad_weight.zero_();
    return;
  }
  const int64_t Kg = pb.group_out_channels(), patch = pb.patch_size();
  const auto go = grad_output.contiguous();
  const auto x = input.contiguous();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(
      input.scalar_type(), "cnnkit_conv_weight_backward_tensor_core", [&] {
        with_tile_shape(Kg, [&](auto shape) {
          using Shape = decltype(shape);
          const int64_t n_tiles = ceil_div<int64_t>(Kg, Shape::BN);
          const int64_t tiles = ceil_div<int64_t>(patch, Shape::BM) * n_tiles * pb.groups;
          const int64_t steps = ceil_div<int64_t>(reduction, Shape::BK);
          int64_t slices = std::clamp<int64_t>(ceil_div(kTargetBlocks, tiles), 1, kMaxSlices);
          slices = std::min(slices, std::max<int64_t>(1, steps / kMinStepsPerSlice));
          const int64_t steps_per_slice = ceil_div(steps, slices);
          slices = ceil_div(steps, steps_per_slice);  // none of them empty

          const int64_t count = grad_weight.numel();
          auto partial = at::empty({slices, count}, x.options().dtype(at::kFloat));
          WeightBackwardArgs<scalar_t> args{raw_bits<scalar_t>(go),
                                            raw_bits<scalar_t>(x),
                                            partial.mutable_data_ptr<float>(),
                                            pb,
                                            phase,
                                            Divider<int32_t>(phase.P_a * phase.Q_b),
                                            Divider<int32_t>(phase.Q_b),
                                            n_tiles,
                                            0,
                                            steps_per_slice};
          launch_tiles<Shape>(args, patch, pb.groups, static_cast<unsigned int>(slices),
                              fits_int32({go.numel(), x.numel(), partial.numel()}),
                              [](auto index) {
                                return conv_weight_backward_tc_kernel<scalar_t, Shape,
                                                                      decltype(index)>;
                              });
          CNNKIT_LAUNCH(grid_for(count), kThreads, 0, current_stream(),
                        sum_slices_kernel<scalar_t>)(partial.const_data_ptr<float>(), slices, count,
                                                     grad_weight.mutable_data_ptr<scalar_t>());
          CNNKIT_CHECK_LAUNCH();
        });
      });
}

}  // namespace cnnkit::cuda::tensor_core
