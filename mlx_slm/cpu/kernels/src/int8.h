// The int8 path of one ISA variant (int8.cpp): x rounded to int8 per block of 32 meets
// 4- and 8-bit weights in integer dot products. AVX2 and up; elsewhere int8_path is false.
#pragma once

#include "kernels.h"

#ifndef KERNEL_NAME
#define KERNEL_NAME generic
#endif

namespace mlx_slm_kernels {
namespace KERNEL_NAME {

bool int8_path(int bits);
#if defined(__AVX2__)
size_t int8_scratch(int M, int K, int group_size);
void int8_prepare(const QuantArgs& a);
void int8_quant_matmul(const QuantArgs& a, int n0, int n1);
#endif

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
