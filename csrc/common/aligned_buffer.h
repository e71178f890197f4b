// A zero-initialized, 64-byte aligned byte buffer for CPU kernel scratch (tiles, tables, packed
// operands): one cache line / one AVX-512 register boundary at data(). For the portable translation
// units only (it is an inline class; see common/dtype.h on ISA-flagged copies).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastops {

class AlignedBuffer {
 public:
  // Exactly `bytes` (zeroed), reallocating every time.
  void resize(std::size_t bytes) {
    raw_.assign(bytes + kAlign, 0);
    data_ = raw_.data() + (-reinterpret_cast<std::uintptr_t>(raw_.data()) & (kAlign - 1));
    size_ = bytes;
  }
  // At least `bytes`, reallocating (zeroed) only to grow: for buffers reused across calls.
  void* grow(std::size_t bytes) {
    if (bytes > size_ || data_ == nullptr) resize(bytes);
    return data_;
  }
  unsigned char* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  static constexpr std::size_t kAlign = 64;
  std::vector<unsigned char> raw_;
  unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace fastops
