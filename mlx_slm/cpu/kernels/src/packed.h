// One ISA variant's products from packed weights, quantized or dense (packed.cpp); see kPackRows.
#pragma once

#include "kernels.h"

#ifndef KERNEL_NAME
#define KERNEL_NAME generic
#endif

namespace mlx_slm_kernels {
namespace KERNEL_NAME {

void packed_matmul(const QuantArgs& a, int t0, int t1);
// packed_int8.cpp: whether `bits` may meet x rounded to int8 here, the scratch `prepared`
// needs and its filling (a.int8 chooses int8 or float), and the int8 product.
bool packed_int8(int bits);
size_t packed_scratch(const QuantArgs& a);
void packed_prepare(const QuantArgs& a);
void packed_int8_matmul(const QuantArgs& a, int t0, int t1);
void packed_dense(const DenseArgs& a, int t0, int t1);

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
