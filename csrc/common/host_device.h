// RECSYS_HOST_DEVICE: index math shared by the C++ CPU kernels and the CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define RECSYS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RECSYS_HOST_DEVICE inline
#endif
