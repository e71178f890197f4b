// Transparent huge pages for large fresh buffers.
#pragma once

#include <cstddef>

namespace fastops {

// Asks for transparent huge pages on a fresh buffer before its first write, so the parallel passes that
// fill it take ~512x fewer page faults (THP "madvise" mode; only whole 2 MiB pages inside the buffer;
// a no-op elsewhere). The contents are untouched.
void advise_huge_pages(void* data, std::size_t bytes);

}  // namespace fastops
