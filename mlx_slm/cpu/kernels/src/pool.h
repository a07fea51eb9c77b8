// A persistent thread pool: the calling thread works too; workers spin briefly between calls
// (decode issues hundreds of small products per token), then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mlx_slm_kernels {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Threads in all, the caller included.
  int size() const {
    return int(workers_.size()) + 1;
  }

  // Runs fn(0) .. fn(tasks - 1) across the pool and returns when all are done. Whoever is
  // running claims the next task, so a worker the OS has descheduled delays nobody.
  void run(int tasks, const std::function<void(int)>& fn);

 private:
  // Waits for jobs after job `seen`, helps with each, returns once stopped.
  void worker_loop(uint32_t seen);
  // Claims and runs tasks of job `job` until none is left or a newer job has started.
  void work(uint32_t job);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::mutex busy_;  // one job at a time: MLX may run several CPU streams concurrently
  std::condition_variable wake_;
  // The job number (high 32 bits) and its next unclaimed task (low 32 bits), in one word so
  // that a claim can never land in a different job than the one it saw.
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int)>* fn_ = nullptr;
  std::atomic<int> tasks_{0};
};

}  // namespace mlx_slm_kernels
