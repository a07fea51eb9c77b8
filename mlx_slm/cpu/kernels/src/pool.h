// A persistent thread pool: the calling thread works too, workers spin briefly between calls
// (decode issues hundreds of small products per token) and then sleep.
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

  // Runs fn(0) .. fn(tasks - 1) across the pool and returns when all are done.
  void run(int tasks, const std::function<void(int)>& fn);

 private:
  void worker_loop();
  void work();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> next_{0};
  std::atomic<int> finished_workers_{0};
  const std::function<void(int)>* fn_ = nullptr;
  int tasks_ = 0;
  std::atomic<bool> stop_{false};
};

}  // namespace mlx_slm_kernels
