// The emulator behind csrc/emulation/cuda_emulation.h: launches, the threads
// of a block (fibers, or OS threads in the sanitizer build), barriers, warp
// exchanges, shared memory and launch statistics.
#include "emulation/cuda_emulation.h"
#include "emulation/runtime.h"

#include <ATen/Parallel.h>

#include <cxxabi.h>

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace cnnkit::emulation {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned kMaxBlockZ = 64;
constexpr unsigned kMaxGridYZ = 65535;
constexpr std::uint64_t kMaxGridX = (std::uint64_t{1} << 31) - 1;
constexpr std::uint64_t kExchangeSlots = kWarpSize;  // one 8-byte value per lane
constexpr std::size_t kScratchFloats = 512;          // two 16x16 WMMA tiles per warp
// Fresh shared memory is filled with this byte (all-ones: NaN in every float
// format), so a kernel that reads shared memory it never wrote sees NaNs.
constexpr unsigned char kSharedPoison = 0xff;

thread_local ThreadContext* current_thread = nullptr;

// Unwinds the frames of a CUDA thread whose block was aborted (a device error,
// or a barrier that can never complete).
struct AbortBlock {};

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

}  // namespace

// ------------------------------------------------------------------ block state

// Barrier bookkeeping of the block that runs. In the fiber build one OS thread
// touches it; in the OS-thread build every access holds `mutex`.
struct BlockState {
  const LaunchConfig* config = nullptr;
  uint3 block_idx{};
  int threads = 0;
  int block_arrived = 0;
  std::uint64_t block_generation = 0;
  std::vector<int> warp_arrived;
  std::vector<std::uint64_t> warp_generation;
  int waiting = 0;  // threads blocked at a barrier that has not completed
  int exited = 0;
  bool aborted = false;
  std::string error;
  std::vector<std::uint64_t> exchange;
  std::vector<float> scratch;
  std::vector<unsigned char> dynamic_shared;  // with 128 bytes of room for alignment
#if defined(CNNKIT_EMULATION_THREADS)
  std::mutex mutex;
  std::condition_variable released;
#endif

  void start(const LaunchConfig& launch, int thread_count, uint3 block) {
    config = &launch;
    block_idx = block;
    threads = thread_count;
    const int warps = (thread_count + kWarpSize - 1) / kWarpSize;
    block_arrived = 0;
    warp_arrived.assign(warps, 0);
    warp_generation.assign(warps, 0);
    waiting = exited = 0;
    aborted = false;
    error.clear();
    exchange.assign(warps * kExchangeSlots, 0);
    scratch.assign(warps * kScratchFloats, 0.0f);
    dynamic_shared.assign(launch.dynamic_shared + 128, kSharedPoison);
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
    if (error.empty()) {
      std::ostringstream out;
      out << "cnnkit emulated CUDA: " << kernel_name(*config) << ", block " << block_idx.x << ", "
          << block_idx.y << ", " << block_idx.z << ": " << message;
      error = out.str();
    }
    aborted = true;
  }

  // Every thread that has not exited waits at a barrier none of them can complete.
  void check_deadlock() {
    if (waiting > 0 && waiting + exited == threads) {
      std::ostringstream out;
      out << "a barrier that not every thread of the block reaches: " << waiting << " of "
          << threads << " threads wait at __syncthreads, __syncwarp or a warp collective, "
          << exited << " have exited";
      fail(out.str());
    }
  }
};

namespace {

// ------------------------------------------------------------------ fibers

#if !defined(CNNKIT_EMULATION_THREADS)

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

constexpr std::size_t kFiberStack = 256 * 1024;

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;  // kFiberStack bytes, the lowest page a guard
  bool done = false;
  ThreadContext context{};
};

// The fibers of one OS thread, reused by every block it runs.
class FiberRunner {
 public:
  ~FiberRunner() {
    for (auto& f : fibers_) {
      if (f.stack != nullptr) munmap(f.stack, kFiberStack);
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
      Fiber& f = fibers_[t];
      f.done = false;
      f.context = thread_context(launch, block, t, &state_);
      f.sp = fresh_stack(f.stack);
    }
    ThreadContext* const outer = current_thread;
    int live = threads;
    while (live > 0) {
      for (int t = 0; t < threads; ++t) {
        if (fibers_[t].done) continue;
        current_ = t;
        current_thread = &fibers_[t].context;
        cnnkit_emulation_switch(&scheduler_sp_, fibers_[t].sp);
        if (fibers_[t].done) --live;
      }
    }
    current_thread = outer;
    TORCH_CHECK(state_.error.empty(), state_.error);
  }

  // Back to the scheduler, from the running fiber.
  void yield() { cnnkit_emulation_switch(&fibers_[current_].sp, scheduler_sp_); }

  BlockState& state() { return state_; }

 private:
  static ThreadContext thread_context(const LaunchConfig& launch, uint3 block, int t,
                                      BlockState* state) {
    const unsigned bx = launch.block.x, by = launch.block.y;
    const unsigned u = static_cast<unsigned>(t);
    return {{u % bx, (u / bx) % by, u / (bx * by)}, block, launch.block, launch.grid, t, state};
  }

  void grow(int threads) {
    while (static_cast<int>(fibers_.size()) < threads) {
      Fiber f;
      void* memory = mmap(nullptr, kFiberStack, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      TORCH_CHECK(memory != MAP_FAILED, "cnnkit emulated CUDA: cannot map a fiber stack");
      mprotect(memory, static_cast<std::size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);
      f.stack = static_cast<char*>(memory);
      fibers_.push_back(f);
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

  static void fiber_main();

  std::vector<Fiber> fibers_;
  void* scheduler_sp_ = nullptr;
  int current_ = 0;
  BlockState state_;
  void (*body_)(const void*) = nullptr;
  const void* closure_ = nullptr;
};

thread_local std::unique_ptr<FiberRunner> fiber_runner;

FiberRunner& runner() {
  if (!fiber_runner) fiber_runner = std::make_unique<FiberRunner>();
  return *fiber_runner;
}

void FiberRunner::fiber_main() {
  FiberRunner& r = runner();
  BlockState& b = r.state_;
  if (!b.aborted) {
    try {
      r.body_(r.closure_);
    } catch (const AbortBlock&) {
    } catch (const std::exception& e) {
      b.fail(e.what());
    } catch (...) {
      b.fail("unknown exception in a kernel");
    }
  }
  r.fibers_[r.current_].done = true;
  ++b.exited;
  b.check_deadlock();
  r.yield();
  std::abort();  // a finished fiber is never resumed
}

BlockState& block_of_caller() { return runner().state(); }

// Waits (as a fiber) until the counter `generation` moves on or the block is aborted.
void wait_for(BlockState& b, const std::uint64_t& generation, std::uint64_t seen) {
  while (generation == seen && !b.aborted) runner().yield();
}

#endif  // !CNNKIT_EMULATION_THREADS

#if defined(CNNKIT_EMULATION_THREADS)
BlockState& block_of_caller() { return *current_thread->block; }
#endif

// Arrival of the calling thread at a barrier of `expected` threads whose
// bookkeeping is (arrived, generation); returns once all have arrived.
void arrive(BlockState& b, int& arrived, std::uint64_t& generation, int expected) {
#if defined(CNNKIT_EMULATION_THREADS)
  std::unique_lock<std::mutex> lock(b.mutex);
#endif
  if (b.aborted) throw AbortBlock{};
  if (++arrived == expected) {
    b.waiting -= expected - 1;
    arrived = 0;
    ++generation;
#if defined(CNNKIT_EMULATION_THREADS)
    b.released.notify_all();
#endif
    return;
  }
  const std::uint64_t seen = generation;
  ++b.waiting;
  b.check_deadlock();
#if defined(CNNKIT_EMULATION_THREADS)
  if (b.aborted) b.released.notify_all();
  b.released.wait(lock, [&] { return generation != seen || b.aborted; });
#else
  wait_for(b, generation, seen);
#endif
  if (generation == seen) throw AbortBlock{};
}

// The caller's warp and the number of its lanes named by `mask` (which must
// all exist).
int warp_members(BlockState& b, unsigned int mask, int& warp) {
  warp = current_thread->linear / kWarpSize;
  if ((mask & ~b.lanes_of(warp)) != 0) {
    device_error("a warp collective names lanes that do not exist in the block");
  }
  if ((mask >> (current_thread->linear % kWarpSize) & 1u) == 0) {
    device_error("a warp collective called by a lane that its mask does not name");
  }
  return __builtin_popcount(mask);
}

// ------------------------------------------------------------------ launches

std::mutex registry_mutex;
std::unordered_map<const void*, int> max_dynamic_shared;  // cudaFuncSetAttribute opt-ins
std::map<std::string, LaunchCount> launch_counts;

void check_configuration(const LaunchConfig& c) {
  const auto fail = [&](const std::string& why) {
    TORCH_CHECK(false, "cnnkit emulated CUDA: cannot launch ", kernel_name(c), " with grid ", dims(c.grid),
                ", block ", dims(c.block), " and ", c.dynamic_shared,
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

#if defined(CNNKIT_EMULATION_THREADS)

// One OS thread per CUDA thread, kept for the whole launch; blocks one after
// another, with a barrier of all threads between two blocks.
void run_launch(const LaunchConfig& config, std::int64_t blocks, void (*body)(const void*),
                const void* closure) {
  const int threads = static_cast<int>(config.block.x * config.block.y * config.block.z);
  BlockState state;
  state.start(config, threads, block_index(config, 0));
  std::string error;
  int finished = 0;           // threads done with the current block
  std::uint64_t block_done = 0;  // blocks finished
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const unsigned bx = config.block.x, by = config.block.y, u = static_cast<unsigned>(t);
      ThreadContext context{{u % bx, (u / bx) % by, u / (bx * by)}, {}, config.block,
                            config.grid, t, &state};
      current_thread = &context;
      for (std::int64_t block = 0; block < blocks; ++block) {
        context.block_idx = block_index(config, block);
        bool skip;
        {
          std::lock_guard<std::mutex> lock(state.mutex);
          skip = state.aborted;
        }
        if (!skip) {
          try {
            body(closure);
          } catch (const AbortBlock&) {
          } catch (const std::exception& e) {
            std::lock_guard<std::mutex> lock(state.mutex);
            state.fail(e.what());
            state.released.notify_all();
          }
        }
        std::unique_lock<std::mutex> lock(state.mutex);
        ++state.exited;
        state.check_deadlock();
        if (state.aborted) state.released.notify_all();
        if (++finished == threads) {  // the last thread of the block starts the next one
          finished = 0;
          ++block_done;
          if (state.aborted) {
            if (error.empty()) error = state.error;
          } else if (block + 1 < blocks) {
            state.start(config, threads, block_index(config, block + 1));
          }
          state.released.notify_all();
        } else {
          const std::uint64_t seen = block_done;
          state.released.wait(lock, [&] { return block_done != seen; });
        }
        if (!error.empty()) break;
      }
      current_thread = nullptr;
    });
  }
  for (auto& thread : pool) thread.join();
  TORCH_CHECK(error.empty(), error);
}

#else

void run_launch(const LaunchConfig& config, std::int64_t blocks, void (*body)(const void*),
                const void* closure) {
  at::parallel_for(0, blocks, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t block = begin; block < end; ++block) {
      runner().run_block(config, block_index(config, block), body, closure);
    }
  });
}

#endif

}  // namespace

// ------------------------------------------------------------------ the header's API

ThreadContext& this_thread() {
  TORCH_INTERNAL_ASSERT(current_thread != nullptr, "a CUDA built-in read outside a kernel");
  return *current_thread;
}

void sync_block() {
  BlockState& b = block_of_caller();
  arrive(b, b.block_arrived, b.block_generation, b.threads);
}

void sync_warp(unsigned int mask) {
  BlockState& b = block_of_caller();
  int warp;
  const int members = warp_members(b, mask, warp);
  arrive(b, b.warp_arrived[warp], b.warp_generation[warp], members);
}

std::uint64_t warp_exchange(unsigned int mask, std::uint64_t value, int source_lane) {
  BlockState& b = block_of_caller();
  int warp;
  const int members = warp_members(b, mask, warp);
  std::uint64_t* slots = b.exchange.data() + warp * kExchangeSlots;
  slots[current_thread->linear % kWarpSize] = value;
  arrive(b, b.warp_arrived[warp], b.warp_generation[warp], members);
  if (source_lane < 0 || source_lane >= kWarpSize || (mask >> source_lane & 1u) == 0) {
    device_error("a warp shuffle reads a lane outside its mask");
  }
  const std::uint64_t out = slots[source_lane];
  // No lane may post its next value before every lane has read this one.
  arrive(b, b.warp_arrived[warp], b.warp_generation[warp], members);
  return out;
}

float* warp_scratch() {
  BlockState& b = block_of_caller();
  return b.scratch.data() + (current_thread->linear / kWarpSize) * kScratchFloats;
}

unsigned char* dynamic_shared_memory() { return block_of_caller().dynamic_shared_base(); }

void device_error(const char* what) {
  BlockState& b = block_of_caller();
  {
#if defined(CNNKIT_EMULATION_THREADS)
    std::lock_guard<std::mutex> lock(b.mutex);
    b.fail(what);
    b.released.notify_all();
#else
    b.fail(what);
#endif
  }
  throw AbortBlock{};
}

namespace {
std::atomic<bool> force_wide_indices{false};
}  // namespace

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
  run_launch(config, blocks, body, closure);
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
