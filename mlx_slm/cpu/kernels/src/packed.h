// One ISA variant's products from packed weights, quantized or dense (packed.cpp); see kPackRows.
#pragma once

#include "kernels.h"

#ifndef KERNEL_NAME
#define KERNEL_NAME generic
#endif

namespace mlx_slm_kernels {
namespace KERNEL_NAME {

void packed_matmul(const QuantArgs& a, int t0, int t1);
void packed_dense(const DenseArgs& a, int t0, int t1);

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
