// parallel_for over [0, n) with an explicit thread count, on a persistent pool (no thread start-up
// per call). The caller's thread works too. Ranges are handed out dynamically in `grain`-sized pieces.
// A call made while the pool is busy (another Python thread, or nested) runs serially in the caller.
#pragma once
#include <cstdint>
#include <functional>

namespace fastops {

// nthreads <= 0 means 1. fn(begin, end) must not throw across threads; an exception from any piece
// is rethrown in the caller after all pieces finish.
void parallel_for(int64_t n, int64_t grain, int nthreads,
                  const std::function<void(int64_t, int64_t)>& fn);

// Number of hardware threads (std::thread::hardware_concurrency, at least 1).
int hardware_threads();

}  // namespace fastops
