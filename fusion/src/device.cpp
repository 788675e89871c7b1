#include "chorus/fusion/device.hpp"

#include <torch/cuda.h>
#include <torch/version.h>

#include "chorus/core/error.hpp"

namespace chorus::fusion {

std::string libtorch_description() {
  if (!torch::cuda::is_available())
    return fmt::format("LibTorch {} (CPU only)", TORCH_VERSION);
  return fmt::format("LibTorch {} with CUDA, {} device(s)", TORCH_VERSION,
                     torch::cuda::device_count());
}

c10::Device parse_device(const std::string& text) {
  std::optional<c10::Device> device;
  try {
    device.emplace(text);
  } catch (const c10::Error&) {
  }
  CHORUS_CHECK(device && (device->is_cpu() || device->is_cuda()),
               "device '{}': expected cpu, cuda or cuda:N", text);
  if (device->is_cpu()) {
    CHORUS_CHECK(!device->has_index() || device->index() == 0,
                 "device '{}': the CPU has no index; use cpu", text);
    return c10::Device(c10::kCPU);
  }
  CHORUS_CHECK(torch::cuda::is_available(),
               "device '{}': {} cannot use CUDA; build chorus against a "
               "LibTorch with CUDA (README, Requirements) or use cpu",
               text, libtorch_description());
  const auto count = static_cast<int>(torch::cuda::device_count());
  CHORUS_CHECK(!device->has_index() || device->index() < count,
               "device '{}': {} has CUDA devices 0..{}", text,
               libtorch_description(), count - 1);
  return *device;
}

}  // namespace chorus::fusion
