#include "chorus/core/memory.hpp"

#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace chorus {

void tune_allocator() {
  const char* keep = std::getenv("CHORUS_DEFAULT_MALLOC");
  if (keep != nullptr && std::strcmp(keep, "1") == 0) return;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr)
    return;
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace chorus
