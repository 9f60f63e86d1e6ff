// Stands in for the CUDA toolkit's <cuda_runtime.h> in the emulated build (host C++).
#pragma once
#include "emulation/cuda_emulation.h"
