// Stands in for the CUDA toolkit's <cuda_fp16.h> in the emulated build (host C++).
#pragma once
#include "emulation/cuda_emulation.h"
