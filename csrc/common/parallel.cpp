#include "common/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fastops {
namespace {

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // Returns false when the pool is busy; the caller then runs serially.
  bool run(int64_t n, int64_t grain, int nthreads, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    ensure_workers(nthreads - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      grain_ = grain;
      next_.store(0);
      error_ = nullptr;
      helpers_wanted_ = nthreads - 1;
      active_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    helpers_wanted_ = 0;  // late wakers must not join a finished job
    done_.wait(lk, [&] { return active_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  void ensure_workers(int count) {
    while (int(workers_.size()) < count) workers_.emplace_back([this] { loop(); });
  }

  void work() {
    for (;;) {
      int64_t b = next_.fetch_add(grain_);
      if (b >= n_) return;
      int64_t e = std::min(n_, b + grain_);
      try {
        (*fn_)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_);
      }
    }
  }

  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      wake_.wait(lk, [&] { return stop_ || (generation_ != seen && helpers_wanted_ > 0); });
      if (stop_) return;
      seen = generation_;
      --helpers_wanted_;
      ++active_;
      lk.unlock();
      work();
      lk.lock();
      if (--active_ == 0) done_.notify_all();
    }
  }

  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, grain_ = 1;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
  int helpers_wanted_ = 0, active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: joining threads during interpreter exit can hang
  return *p;
}

thread_local bool t_inside_parallel = false;

}  // namespace

int hardware_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

void parallel_for(int64_t n, int64_t grain, int nthreads,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t pieces = (n + grain - 1) / grain;
  nthreads = int(std::min<int64_t>(std::max(1, nthreads), pieces));
  if (nthreads == 1 || t_inside_parallel) {
    fn(0, n);
    return;
  }
  auto guarded = [&](int64_t b, int64_t e) {
    bool was = t_inside_parallel;
    t_inside_parallel = true;
    try {
      fn(b, e);
    } catch (...) {
      t_inside_parallel = was;
      throw;
    }
    t_inside_parallel = was;
  };
  std::function<void(int64_t, int64_t)> g = guarded;
  if (!pool().run(n, grain, nthreads, g)) fn(0, n);
}

}  // namespace fastops
