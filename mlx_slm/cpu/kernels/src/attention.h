// One ISA variant's attention kernel (attention.cpp); see AttentionArgs in kernels.h.
#pragma once

#include "kernels.h"

#ifndef KERNEL_NAME
#define KERNEL_NAME generic
#endif

namespace mlx_slm_kernels {
namespace KERNEL_NAME {

void attention_rows(const AttentionArgs& a, int u0, int u1, float* scores, int* visible);

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
