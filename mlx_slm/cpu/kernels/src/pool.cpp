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
constexpr auto kSpin = std::chrono::microseconds(300);

uint32_t job_of(uint64_t state) {
  return uint32_t(state >> 32);
}

// Spins, giving the core away now and then: on a busy machine the thread we wait for may
// need it.
inline void relax(int& spins) {
  if (++spins % 64 == 0)
    std::this_thread::yield();
  else
    CPU_RELAX();
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  // The job number a worker starts from is read here, not when its thread first runs: a
  // thread that starts late (a busy machine) would otherwise miss the destructor's wake-up.
  const uint32_t first = job_of(state_.load());
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, first] { worker_loop(first); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    state_.fetch_add(uint64_t(1) << 32);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work(uint32_t job) {
  uint64_t s = state_.load(std::memory_order_acquire);
  while (job_of(s) == job) {
    const uint32_t task = uint32_t(s);
    if (int(task) >= tasks_.load(std::memory_order_relaxed)) return;
    if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
      // The job cannot finish (nor fn_ change) before this claimed task is done.
      (*fn_)(int(task));
      done_.fetch_add(1, std::memory_order_acq_rel);
      s = state_.load(std::memory_order_acquire);
    }
  }
}

void ThreadPool::run(int tasks, const std::function<void(int)>& fn) {
  std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
  if (workers_.empty() || tasks <= 1 || !busy.owns_lock()) {
    for (int i = 0; i < tasks; ++i) fn(i);
    return;
  }
  fn_ = &fn;
  tasks_.store(tasks, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  const uint32_t job = job_of(state_.load()) + 1;
  state_.store(uint64_t(job) << 32);  // seq_cst: pairs with a sleeper's check (worker_loop)
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    wake_.notify_all();
  }
  work(job);
  int spins = 0;
  while (done_.load(std::memory_order_acquire) < tasks) relax(spins);
}

void ThreadPool::worker_loop(uint32_t seen) {
  while (true) {
    const auto start = std::chrono::steady_clock::now();
    int spins = 0;
    while (job_of(state_.load(std::memory_order_acquire)) == seen) {
      relax(spins);
      if (spins % 256 == 0 && std::chrono::steady_clock::now() - start > kSpin) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, [&] { return job_of(state_.load()) != seen; });
        sleepers_.fetch_sub(1);
      }
    }
    if (stop_.load()) return;
    seen = job_of(state_.load(std::memory_order_acquire));
    work(seen);
  }
}

}  // namespace mlx_slm_kernels
