#pragma once

#include <c10/core/Device.h>

#include <string>

/// Where tensors are computed: the CPU, or a CUDA device when the LibTorch
/// chorus is built against has CUDA. Inputs and results stay on the CPU;
/// models and batches move to the device at the boundary of training and
/// inference only.
namespace chorus::fusion {

/// Parses "cpu", "cuda" or "cuda:N". Throws `chorus::Error`
/// (INVALID_ARGUMENT) for any other text, and for a CUDA device the LibTorch
/// in use cannot reach (no CUDA, or no device N), naming that LibTorch.
c10::Device parse_device(const std::string& text);

/// The LibTorch in use, e.g. "LibTorch 1.13.0 (CPU only)" or "LibTorch
/// 2.1.0 with CUDA, 2 devices".
std::string libtorch_description();

}  // namespace chorus::fusion
