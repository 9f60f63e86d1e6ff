// Stands in for the CUDA toolkit's <cuda_bf16.h> in the emulated build (host C++).
#pragma once
#include "emulation/cuda_emulation.h"
