// Validation of a tensor-product plan (so3.h), shared by the CPU and CUDA entry points.
#include <algorithm>
#include <string>
#include <vector>

#include "common/errors.h"
#include "so3/so3.h"

namespace fastops {
namespace so3 {
namespace {

struct BlockUse {
  int64_t offset, mul, dim;
};

// Blocks of one operand: equal offsets must agree on the shape, different blocks must not overlap.
void check_blocks(std::vector<BlockUse> blocks, const std::string& op, const char* operand) {
  std::sort(blocks.begin(), blocks.end(), [](const BlockUse& a, const BlockUse& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.mul * a.dim < b.mul * b.dim;
  });
  for (size_t i = 1; i < blocks.size(); ++i) {
    const BlockUse &prev = blocks[i - 1], &cur = blocks[i];
    if (cur.offset == prev.offset && cur.mul == prev.mul && cur.dim == prev.dim) continue;
    if (cur.offset < prev.offset + prev.mul * prev.dim || cur.offset == prev.offset)
      throw_value(op + ": plan: " + operand + " blocks at offsets " + std::to_string(prev.offset) + " and " +
                  std::to_string(cur.offset) + " overlap");
  }
}

}  // namespace

void validate_plan(const PlanView& plan, const char* op_name) {
  const std::string op(op_name);
  if (plan.dim1 < 0 || plan.dim2 < 0 || plan.dim_out < 0 || plan.weight_numel < 0 || plan.num_paths < 0 ||
      plan.num_cg < 0)
    throw_value(op + ": plan: negative sizes");
  if (plan.num_cg >= (int64_t(1) << 31) || plan.num_paths >= (int64_t(1) << 31))
    throw_value(op + ": plan: too many paths or CG nonzeros");
  std::vector<BlockUse> b1, b2, bo;
  for (int64_t p = 0; p < plan.num_paths; ++p) {
    const std::string where = op + ": plan path " + std::to_string(p) + ": ";
    const int64_t mode = plan.field(p, kMode);
    const int64_t l1 = plan.field(p, kL1), l2 = plan.field(p, kL2), l3 = plan.field(p, kL3);
    const int64_t m1 = plan.field(p, kMul1), m2 = plan.field(p, kMul2), mo = plan.field(p, kMulOut);
    if (mode < 0 || mode > int64_t(Mode::uuu)) throw_value(where + "unknown mode " + std::to_string(mode));
    if (l1 < 0 || l2 < 0 || l3 < 0 || l3 < (l1 > l2 ? l1 - l2 : l2 - l1) || l3 > l1 + l2 || l1 + l2 > 1000)
      throw_value(where + "(l1, l2, l3) violates the triangle rule");
    if (m1 < 0 || m2 < 0 || mo < 0 || m1 > (1 << 20) || m2 > (1 << 20) || mo > (1 << 20))
      throw_value(where + "multiplicities must be in [0, 2^20]");
    const Mode md = Mode(mode);
    const bool has_weight = plan.field(p, kWeightOffset) >= 0;
    if (md == Mode::uvu && mo != m1) throw_value(where + "uvu needs mul_out == mul1");
    if (md == Mode::uuu && (m2 != m1 || mo != m1)) throw_value(where + "uuu needs mul1 == mul2 == mul_out");
    if (md == Mode::uuw && m2 != m1) throw_value(where + "uuw needs mul1 == mul2");
    if (md == Mode::uuw && !has_weight && mo != 1) throw_value(where + "uuw without weight needs mul_out == 1");
    const int64_t d1 = 2 * l1 + 1, d2 = 2 * l2 + 1, d3 = 2 * l3 + 1;
    const int64_t o1 = plan.field(p, kX1Offset), o2 = plan.field(p, kX2Offset), oo = plan.field(p, kOutOffset);
    // Compared as offset > size - extent: offset + extent could overflow for a hand-made plan.
    if (o1 < 0 || o1 > plan.dim1 - m1 * d1) throw_value(where + "x1 block outside the x1 row");
    if (o2 < 0 || o2 > plan.dim2 - m2 * d2) throw_value(where + "x2 block outside the x2 row");
    if (oo < 0 || oo > plan.dim_out - mo * d3) throw_value(where + "output block outside the output row");
    // The kernels read blocks at one offset as one block, so an empty block (the Python layer drops paths
    // with one) sharing an offset with another is an overlap here too.
    b1.push_back({o1, m1, d1});
    b2.push_back({o2, m2, d2});
    bo.push_back({oo, mo, d3});
    if (has_weight) {
      const int64_t size = md == Mode::uvw ? m1 * m2 * mo : md == Mode::uvu ? m1 * m2 : md == Mode::uuw ? m1 * mo : m1;
      if (plan.field(p, kWeightOffset) > plan.weight_numel - size)
        throw_value(where + "weight block outside weight_numel");
    }
    const int64_t begin = plan.field(p, kCgBegin), count = plan.field(p, kCgCount);
    if (begin < 0 || count < 0 || begin > plan.num_cg - count) throw_value(where + "CG range outside the table");
    for (int64_t e = begin; e < begin + count; ++e) {
      const int32_t* ijk = plan.cg_ijk + 3 * e;
      if (ijk[0] < 0 || ijk[0] >= d1 || ijk[1] < 0 || ijk[1] >= d2 || ijk[2] < 0 || ijk[2] >= d3)
        throw_value(where + "CG index outside (2l1+1, 2l2+1, 2l3+1)");
    }
  }
  check_blocks(b1, op, "x1");
  check_blocks(b2, op, "x2");
  check_blocks(bo, op, "output");
}

int64_t max_degree_dim(const PlanView& plan) {
  int64_t d = 0;
  for (int64_t p = 0; p < plan.num_paths; ++p)
    for (PathField f : {kL1, kL2, kL3}) d = std::max(d, 2 * plan.field(p, f) + 1);
  return d;
}

}  // namespace so3
}  // namespace fastops
