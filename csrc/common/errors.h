// Exception types with a fixed Python mapping (done once in bindings/module.cpp):
//   ValueError   -> Python ValueError   (bad shapes, values, ids, devices)
//   TypeError    -> Python TypeError    (bad dtypes)
//   std::runtime_error -> RuntimeError  (backend unavailable, CUDA failures)
#pragma once
#include <stdexcept>
#include <string>

namespace fastops {

struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::logic_error {
  using std::logic_error::logic_error;
};

[[noreturn]] inline void throw_value(const std::string& msg) { throw ValueError(msg); }
[[noreturn]] inline void throw_type(const std::string& msg) { throw TypeError(msg); }

#define FASTOPS_CHECK_VALUE(cond, msg) \
  do {                                 \
    if (!(cond)) ::fastops::throw_value(msg); \
  } while (0)

}  // namespace fastops
