#include "pool.h"

#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() asm volatile("yield")
#else
#define CPU_RELAX() \
  do {              \
  } while (0)
#endif

namespace mlx_slm_kernels {

namespace {
// Long enough to bridge the gaps between the products of one decode step, short enough not
// to take a core from Python between steps.
constexpr auto kSpin = std::chrono::microseconds(200);
}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work() {
  for (int i = next_.fetch_add(1, std::memory_order_relaxed); i < tasks_;
       i = next_.fetch_add(1, std::memory_order_relaxed))
    (*fn_)(i);
}

void ThreadPool::run(int tasks, const std::function<void(int)>& fn) {
  if (workers_.empty() || tasks <= 1) {
    for (int i = 0; i < tasks; ++i) fn(i);
    return;
  }
  fn_ = &fn;
  tasks_ = tasks;
  next_.store(0, std::memory_order_relaxed);
  finished_workers_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  work();
  // Every worker must leave this generation before fn_ and the counters are reused.
  while (finished_workers_.load(std::memory_order_acquire) < int(workers_.size())) CPU_RELAX();
}

void ThreadPool::worker_loop() {
  uint64_t seen = generation_.load(std::memory_order_acquire);
  while (true) {
    auto start = std::chrono::steady_clock::now();
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      CPU_RELAX();
      if (++spins % 256 == 0 && std::chrono::steady_clock::now() - start > kSpin) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_) return;
    work();
    finished_workers_.fetch_add(1, std::memory_order_release);
  }
}

}  // namespace mlx_slm_kernels
