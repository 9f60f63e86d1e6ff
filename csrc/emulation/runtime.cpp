// The emulator behind csrc/emulation/cuda_emulation.h: launches, the threads
// of a block as fibers, barriers, warp exchanges, shared memory and launch
// statistics.
//
// A block runs on one OS thread: each CUDA thread is a fiber with a stack of
// its own, switched to the scheduler when it waits at a barrier (or ends),
// and the scheduler resumes the fibers round-robin. Blocks run side by side
// on the intra-op threads, each on one of them.
//
// Under the sanitizers (the builds of make emulate-sanitize) the fibers are
// announced to them: to ThreadSanitizer each fiber is a thread of its own,
// switched to without synchronisation, and the only happens-before edges
// between the threads of a block are the ones CUDA gives (barriers and warp
// collectives, the start and end of the block), so a race on shared or global
// memory between two threads of a block is reported as on a GPU it is a
// race; to AddressSanitizer each switch moves to the fiber's own stack. The
// emulator's own bookkeeping is atomic, invisible to ThreadSanitizer.
#include "emulation/runtime.h"

#include <ATen/Parallel.h>
#include <cxxabi.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "emulation/cuda_emulation.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define CNNKIT_EMULATION_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CNNKIT_EMULATION_ASAN 1
#endif

namespace cnnkit::emulation {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridYZ = 65535;
constexpr std::uint64_t kMaxGridX = (std::uint64_t{1} << 31) - 1;
constexpr std::size_t kExchangeSlots = kWarpSize;  // one 8-byte value per lane
constexpr std::size_t kScratchFloats = 512;        // two 16x16 WMMA tiles per warp
constexpr std::size_t kFiberStack = 256 * 1024;
// Fresh shared memory is filled with this byte (all-ones: NaN in every float
// format), so a kernel that reads shared memory it never wrote sees NaNs.
constexpr unsigned char kSharedPoison = 0xff;

// Unwinds the frames of a CUDA thread whose block was aborted (a device error,
// or a barrier that can never complete).
struct AbortBlock {};

// Happens-before edges for ThreadSanitizer, on any address as a token.
inline void release(const void* token) {
#if defined(CNNKIT_EMULATION_TSAN)
  __tsan_release(const_cast<void*>(token));
#else
  (void)token;
#endif
}
inline void acquire(const void* token) {
#if defined(CNNKIT_EMULATION_TSAN)
  __tsan_acquire(const_cast<void*>(token));
#else
  (void)token;
#endif
}

std::string dims(dim3 d) {
  std::ostringstream out;
  out << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return out.str();
}

// A kernel's name for messages and statistics: as its launch spells it, with
// the kernel's signature where the launch names only a variable.
std::string kernel_name(const LaunchConfig& c) {
  std::string name = c.name;
  if (name.find('<') != std::string::npos) return name;
  int status = 0;
  char* demangled = abi::__cxa_demangle(c.signature->name(), nullptr, nullptr, &status);
  if (status == 0 && demangled != nullptr) {
    name += std::string(" : ") + demangled;
    std::free(demangled);
  }
  return name;
}

// Saves the callee-saved registers, the SSE control word and the x87 control
// word on the current stack, stores the stack pointer in *save, and resumes
// the context whose stack pointer is `next` (System V x86-64).
extern "C" void cnnkit_emulation_switch(void** save, void* next);
asm(R"(
  .text
  .globl cnnkit_emulation_switch
  .hidden cnnkit_emulation_switch
  .type cnnkit_emulation_switch, @function
cnnkit_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cnnkit_emulation_switch, .-cnnkit_emulation_switch
)");

// ------------------------------------------------------------------ block state

// The block that runs on this OS thread: barrier bookkeeping, warp scratch,
// dynamic shared memory.
struct BlockState {
  const LaunchConfig* config = nullptr;
  uint3 block_idx{};
  int threads = 0;
  std::atomic<int> block_arrived{0};
  std::atomic<std::uint64_t> block_generation{0};
  std::unique_ptr<std::atomic<int>[]> warp_arrived;
  std::unique_ptr<std::atomic<std::uint64_t>[]> warp_generation;
  std::atomic<int> waiting{0};  // threads blocked at a barrier that has not completed
  std::atomic<int> exited{0};
  std::atomic<bool> aborted{false};
  std::atomic<bool> failed{false};
  std::string error;  // written once, by the first failure
  std::vector<std::uint64_t> exchange;
  std::vector<float> scratch;
  std::vector<unsigned char> dynamic_shared;  // with 128 bytes of room for alignment
  // Addresses whose only use is as ThreadSanitizer sync tokens: two per
  // barrier, by the parity of its generation.
  char block_token[2];
  std::vector<char> warp_tokens;
  char start_token, end_token;

  void start(const LaunchConfig& launch, int thread_count, uint3 block) {
    config = &launch;
    block_idx = block;
    threads = thread_count;
    const int warps = (thread_count + kWarpSize - 1) / kWarpSize;
    block_arrived = 0;
    warp_arrived.reset(new std::atomic<int>[warps]);
    warp_generation.reset(new std::atomic<std::uint64_t>[warps]);
    for (int w = 0; w < warps; ++w) {
      warp_arrived[w] = 0;
      warp_generation[w] = 0;
    }
    waiting = 0;
    exited = 0;
    aborted = false;
    failed = false;
    error.clear();
    exchange.assign(warps * kExchangeSlots, 0);
    scratch.assign(warps * kScratchFloats, 0.0f);
    dynamic_shared.assign(launch.dynamic_shared + 128, kSharedPoison);
    warp_tokens.assign(2 * warps, 0);
  }

  unsigned char* dynamic_shared_base() {
    const auto address = reinterpret_cast<std::uintptr_t>(dynamic_shared.data());
    return dynamic_shared.data() + ((128 - address % 128) % 128);
  }

  // Lanes of warp w that exist (the last warp of a block may be partial).
  unsigned int lanes_of(int warp) const {
    const int count = std::min(kWarpSize, threads - warp * kWarpSize);
    return count == kWarpSize ? 0xffffffffu : ((1u << count) - 1);
  }

  void fail(const std::string& message) {
    if (!failed.exchange(true)) {
      std::ostringstream out;
      out << "cnnkit emulated CUDA: " << kernel_name(*config) << ", block " << block_idx.x << ", "
          << block_idx.y << ", " << block_idx.z << ": " << message;
      error = out.str();
    }
    aborted = true;
  }

  // Every thread that has not exited waits at a barrier none of them can complete.
  void check_deadlock() {
    const int w = waiting, e = exited;
    if (w > 0 && w + e == threads) {
      std::ostringstream out;
      out << "a barrier that not every thread of the block reaches: " << w << " of " << threads
          << " threads wait at __syncthreads, __syncwarp or a warp collective, " << e
          << " have exited";
      fail(out.str());
    }
  }
};

// ------------------------------------------------------------------ fibers

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // kFiberStack bytes, the lowest page a guard
  std::atomic<bool> done{false};
  ThreadContext context{};
#if defined(CNNKIT_EMULATION_TSAN)
  void* tsan_fiber = nullptr;
#endif
#if defined(CNNKIT_EMULATION_ASAN)
  void* fake_stack = nullptr;
#endif
};

// The CUDA thread that runs (on this OS thread): set by the scheduler before
// it switches to a fiber.
thread_local std::atomic<ThreadContext*> current_thread{nullptr};

void fiber_main();

// The fibers of one OS thread, reused by every block it runs.
class FiberRunner {
 public:
  FiberRunner() {
#if defined(CNNKIT_EMULATION_TSAN)
    scheduler_tsan_ = __tsan_get_current_fiber();
#endif
  }

  ~FiberRunner() {
    for (auto& f : fibers_) {
#if defined(CNNKIT_EMULATION_TSAN)
      __tsan_destroy_fiber(f->tsan_fiber);
#endif
      munmap(f->stack, kFiberStack);
    }
  }

  void run_block(const LaunchConfig& launch, uint3 block, void (*body)(const void*),
                 const void* closure) {
    const int threads = static_cast<int>(launch.block.x * launch.block.y * launch.block.z);
    grow(threads);
    state_.start(launch, threads, block);
    body_ = body;
    closure_ = closure;
    for (int t = 0; t < threads; ++t) {
      Fiber& f = *fibers_[t];
      f.done = false;
      f.context = thread_context(launch, block, t);
      if (f.sp == nullptr) f.sp = fresh_stack(f.stack);  // else parked at the end of its last block
    }
    // Everything written so far (the block's state, the launch's arguments)
    // happens before the block's threads start.
    release(&state_.start_token);
    ThreadContext* const outer = current_thread;
    int live = threads;
    while (live > 0) {
      for (int t = 0; t < threads; ++t) {
        Fiber& f = *fibers_[t];
        if (f.done) continue;
        current_ = t;
        current_thread = &f.context;
        switch_to(f);
        if (f.done) --live;
      }
    }
    current_thread = outer;
    // Everything the block's threads wrote happens before what follows the block.
    acquire(&state_.end_token);
    TORCH_CHECK(!state_.failed, state_.error);
  }

  // Back to the scheduler, from the running fiber f; `finished` when it is
  // done with its block (it comes back for the thread of the same index in the
  // next block). Everything the fiber reads of the runner is read before
  // ThreadSanitizer hears of the switch.
  void yield(Fiber& f, bool finished = false) {
    void* const scheduler_sp = scheduler_sp_;
#if defined(CNNKIT_EMULATION_TSAN)
    void* const scheduler_tsan = scheduler_tsan_;
#endif
#if defined(CNNKIT_EMULATION_ASAN)
    const void* const bottom = scheduler_stack_bottom_;
    const std::size_t size = scheduler_stack_size_;
#endif
    // A finished fiber's last touch of the block: what it did happens before
    // what follows the block.
    if (finished) release(&state_.end_token);
#if defined(CNNKIT_EMULATION_TSAN)
    __tsan_switch_to_fiber(scheduler_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(CNNKIT_EMULATION_ASAN)
    __sanitizer_start_switch_fiber(&f.fake_stack, bottom, size);
#endif
    cnnkit_emulation_switch(&f.sp, scheduler_sp);
#if defined(CNNKIT_EMULATION_ASAN)
    __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
  }

  // First thing a fiber does on its own stack, once.
  void entered() {
#if defined(CNNKIT_EMULATION_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack_bottom_, &scheduler_stack_size_);
#endif
  }

  // First thing a fiber does for each block it runs.
  void block_started() { acquire(&state_.start_token); }

  BlockState& state() { return state_; }
  void run_body() { body_(closure_); }
  Fiber& current_fiber() { return *fibers_[current_]; }

 private:
  void switch_to(Fiber& f) {
    void* const sp = f.sp;  // read as the scheduler, before ThreadSanitizer moves to the fiber
#if defined(CNNKIT_EMULATION_TSAN)
    __tsan_switch_to_fiber(f.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(CNNKIT_EMULATION_ASAN)
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, f.stack, kFiberStack);
#endif
    cnnkit_emulation_switch(&scheduler_sp_, sp);
#if defined(CNNKIT_EMULATION_ASAN)
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  }

  static ThreadContext thread_context(const LaunchConfig& launch, uint3 block, int t) {
    const unsigned bx = launch.block.x, by = launch.block.y;
    const unsigned u = static_cast<unsigned>(t);
    return {{u % bx, (u / bx) % by, u / (bx * by)}, block, launch.block, launch.grid, t};
  }

  void grow(int threads) {
    while (static_cast<int>(fibers_.size()) < threads) {
      auto f = std::make_unique<Fiber>();
      void* memory = mmap(nullptr, kFiberStack, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      TORCH_CHECK(memory != MAP_FAILED, "cnnkit emulated CUDA: cannot map a fiber stack");
      mprotect(memory, static_cast<std::size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);
      f->stack = static_cast<char*>(memory);
#if defined(CNNKIT_EMULATION_TSAN)
      f->tsan_fiber = __tsan_create_fiber(0);
#endif
      fibers_.push_back(std::move(f));
    }
  }

  // A stack whose first switch "returns" into fiber_main (see the layout the
  // switch pops: control words, r15 .. rbp, return address).
  static void* fresh_stack(char* stack) {
    auto top = reinterpret_cast<std::uintptr_t>(stack + kFiberStack) & ~std::uintptr_t{15};
    auto* sp = reinterpret_cast<std::uint64_t*>(top);
    *--sp = 0;  // fiber_main's own return address: it never returns
    *--sp = reinterpret_cast<std::uint64_t>(&fiber_main);
    for (int r = 0; r < 6; ++r) *--sp = 0;
    --sp;
    unsigned int mxcsr;
    unsigned short fpu;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu));
    std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpu, 2);
    return sp;
  }

  std::vector<std::unique_ptr<Fiber>> fibers_;
  void* scheduler_sp_ = nullptr;
  std::atomic<int> current_{0};
  BlockState state_;
  void (*body_)(const void*) = nullptr;
  const void* closure_ = nullptr;
#if defined(CNNKIT_EMULATION_TSAN)
  void* scheduler_tsan_ = nullptr;
#endif
#if defined(CNNKIT_EMULATION_ASAN)
  const void* scheduler_stack_bottom_ = nullptr;
  std::size_t scheduler_stack_size_ = 0;
#endif
};

thread_local std::unique_ptr<FiberRunner> fiber_runner;

FiberRunner& runner() {
  if (!fiber_runner) fiber_runner = std::make_unique<FiberRunner>();
  return *fiber_runner;
}

// A fiber runs one CUDA thread of every block its OS thread runs, in a loop
// that never returns: no frame of a finished thread is left open (the
// sanitizers' shadow stacks stay flat), and a stack is set up once.
void fiber_main() {
  FiberRunner& r = runner();
  r.entered();
  for (;;) {
    r.block_started();
    Fiber& me = r.current_fiber();
    BlockState& b = r.state();
    if (!b.aborted) {
      try {
        r.run_body();
      } catch (const AbortBlock&) {
      } catch (const std::exception& e) {
        b.fail(e.what());
      } catch (...) {
        b.fail("unknown exception in a kernel");
      }
    }
    ++b.exited;
    b.check_deadlock();
    me.done = true;
    r.yield(me, /*finished=*/true);
  }
}

BlockState& block_of_caller() { return runner().state(); }

// Arrival of the calling thread at a barrier of `expected` threads whose
// bookkeeping is (arrived, generation) and whose sync tokens are tokens[0, 1];
// returns once all have arrived.
void arrive(BlockState& b, std::atomic<int>& arrived, std::atomic<std::uint64_t>& generation,
            int expected, const char* tokens) {
  if (b.aborted) throw AbortBlock{};
  const std::uint64_t seen = generation;
  const char* token = tokens + (seen & 1);
  release(token);
  if (++arrived == expected) {
    b.waiting -= expected - 1;
    arrived = 0;
    ++generation;
  } else {
    ++b.waiting;
    b.check_deadlock();
    FiberRunner& r = runner();
    while (generation == seen && !b.aborted) r.yield(r.current_fiber());
    if (generation == seen) throw AbortBlock{};
  }
  acquire(token);
}

// The caller's warp and the number of its lanes named by `mask` (which must
// all exist, the caller among them).
int warp_members(BlockState& b, unsigned int mask, int& warp) {
  const int linear = current_thread.load()->linear;
  warp = linear / kWarpSize;
  if ((mask & ~b.lanes_of(warp)) != 0) {
    device_error("a warp collective names lanes that do not exist in the block");
  }
  if ((mask >> (linear % kWarpSize) & 1u) == 0) {
    device_error("a warp collective called by a lane that its mask does not name");
  }
  return __builtin_popcount(mask);
}

void sync_warp_of(BlockState& b, int warp, int members) {
  arrive(b, b.warp_arrived[warp], b.warp_generation[warp], members, &b.warp_tokens[2 * warp]);
}

// ------------------------------------------------------------------ launches

std::mutex registry_mutex;
std::unordered_map<const void*, int> max_dynamic_shared;  // cudaFuncSetAttribute opt-ins
std::map<std::string, LaunchCount> launch_counts;
std::atomic<bool> force_wide_indices{false};

void check_configuration(const LaunchConfig& c) {
  const auto fail = [&](const std::string& why) {
    TORCH_CHECK(false, "cnnkit emulated CUDA: cannot launch ", kernel_name(c), " with grid ",
                dims(c.grid), ", block ", dims(c.block), " and ", c.dynamic_shared,
                " bytes of dynamic shared memory: ", why);
  };
  const std::uint64_t threads = std::uint64_t{c.block.x} * c.block.y * c.block.z;
  if (threads == 0 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) {
    fail("a grid or block dimension is 0 (invalid configuration argument)");
  }
  if (c.block.x > kMaxThreadsPerBlock || c.block.y > kMaxThreadsPerBlock ||
      c.block.z > kMaxBlockZ || threads > kMaxThreadsPerBlock) {
    fail("a block has at most 1024 threads, and dimensions of at most (1024, 1024, 64)");
  }
  if (c.grid.x > kMaxGridX || c.grid.y > kMaxGridYZ || c.grid.z > kMaxGridYZ) {
    fail("grid.y and grid.z are at most 65535, grid.x at most 2^31 - 1");
  }
  std::size_t limit = kDefaultDynamicShared;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    const auto it = max_dynamic_shared.find(c.kernel);
    if (it != max_dynamic_shared.end()) limit = std::max<std::size_t>(limit, it->second);
  }
  if (c.dynamic_shared > limit) {
    fail(limit == kDefaultDynamicShared
             ? "more than 48 KiB of dynamic shared memory needs the kernel's opt-in "
               "(cudaFuncSetAttribute with cudaFuncAttributeMaxDynamicSharedMemorySize)"
             : "more dynamic shared memory than the kernel opted in to");
  }
}

uint3 block_index(const LaunchConfig& c, std::int64_t linear) {
  const std::uint64_t u = static_cast<std::uint64_t>(linear);
  return {static_cast<unsigned>(u % c.grid.x), static_cast<unsigned>((u / c.grid.x) % c.grid.y),
          static_cast<unsigned>(u / (std::uint64_t{c.grid.x} * c.grid.y))};
}

}  // namespace

// ------------------------------------------------------------------ the header's API

ThreadContext& this_thread() {
  ThreadContext* const t = current_thread.load(std::memory_order_relaxed);
  TORCH_INTERNAL_ASSERT(t != nullptr, "a CUDA built-in read outside a kernel");
  return *t;
}

void sync_block() {
  BlockState& b = block_of_caller();
  arrive(b, b.block_arrived, b.block_generation, b.threads, b.block_token);
}

void sync_warp(unsigned int mask) {
  BlockState& b = block_of_caller();
  int warp;
  const int members = warp_members(b, mask, warp);
  sync_warp_of(b, warp, members);
}

std::uint64_t warp_exchange(unsigned int mask, std::uint64_t value, int source_lane) {
  BlockState& b = block_of_caller();
  int warp;
  const int members = warp_members(b, mask, warp);
  std::uint64_t* slots = b.exchange.data() + warp * kExchangeSlots;
  slots[current_thread.load()->linear % kWarpSize] = value;
  sync_warp_of(b, warp, members);
  if (source_lane < 0 || source_lane >= kWarpSize || (mask >> source_lane & 1u) == 0) {
    device_error("a warp shuffle reads a lane outside its mask");
  }
  const std::uint64_t out = slots[source_lane];
  // No lane may post its next value before every lane has read this one.
  sync_warp_of(b, warp, members);
  return out;
}

float* warp_scratch() {
  BlockState& b = block_of_caller();
  return b.scratch.data() + (current_thread.load()->linear / kWarpSize) * kScratchFloats;
}

unsigned char* dynamic_shared_memory() { return block_of_caller().dynamic_shared_base(); }

void device_error(const char* what) {
  block_of_caller().fail(what);
  throw AbortBlock{};
}

bool wide_indices() { return force_wide_indices.load(std::memory_order_relaxed); }
void set_wide_indices(bool on) { force_wide_indices.store(on, std::memory_order_relaxed); }

void set_max_dynamic_shared(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  max_dynamic_shared[kernel] = bytes;
}

void launch(const LaunchConfig& config, void (*body)(const void*), const void* closure) {
  check_configuration(config);
  const std::int64_t blocks = std::int64_t{config.grid.x} * config.grid.y * config.grid.z;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto& count = launch_counts[kernel_name(config)];
    count.launches += 1;
    count.blocks += blocks;
  }
#if defined(CNNKIT_EMULATION_TSAN) || defined(CNNKIT_EMULATION_ASAN)
  // One OS thread: the sanitizers see each CUDA thread as a fiber of it.
  for (std::int64_t block = 0; block < blocks; ++block) {
    runner().run_block(config, block_index(config, block), body, closure);
  }
#else
  at::parallel_for(0, blocks, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t block = begin; block < end; ++block) {
      runner().run_block(config, block_index(config, block), body, closure);
    }
  });
#endif
}

std::map<std::string, LaunchCount> launch_statistics() {
  std::lock_guard<std::mutex> lock(registry_mutex);
  return launch_counts;
}

void reset_launch_statistics() {
  std::lock_guard<std::mutex> lock(registry_mutex);
  launch_counts.clear();
}

}  // namespace cnnkit::emulation
