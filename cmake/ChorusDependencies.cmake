# Every dependency comes from a Debian package (scripts/install-deps.sh).
# No FetchContent, no vendored copies.

find_package(Threads REQUIRED)
find_package(Torch REQUIRED)
find_package(Protobuf REQUIRED)
find_package(OpenSSL 3 REQUIRED)
find_package(ZLIB REQUIRED)
find_package(fmt REQUIRED)
find_package(spdlog REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
# Prometheus metrics: the registry and text format (core/src/metrics.cpp).
# They are served by our own small HTTP endpoint on Asio
# (protocol/src/metrics_server.cpp), not prometheus-cpp's civetweb Exposer:
# civetweb starts its threads with a fixed small stack, which glibc refuses
# (EINVAL) in a process whose static TLS is as large as libtorch's.
find_package(prometheus-cpp CONFIG REQUIRED)
# Data readers: PNG (libspng), JPEG (TurboJPEG), .npz archives (libzip).
# Debian ships pkg-config files for all three, not CMake configs for spng.
find_package(PkgConfig REQUIRED)
pkg_check_modules(spng REQUIRED IMPORTED_TARGET spng)
pkg_check_modules(turbojpeg REQUIRED IMPORTED_TARGET libturbojpeg)
pkg_check_modules(libzip REQUIRED IMPORTED_TARGET libzip)
if(CHORUS_BUILD_TESTS)
  find_package(doctest REQUIRED)
endif()

# Torch's imported target carries its compile flags (the C++11 ABI define) but
# not its headers' location in every configuration; wrap it once.
if(NOT TARGET chorus_torch)
  add_library(chorus_torch INTERFACE)
  target_link_libraries(chorus_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(chorus_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
  add_library(chorus::torch ALIAS chorus_torch)
endif()

# Standalone Asio is header-only and ships no CMake config.
find_path(ASIO_INCLUDE_DIR asio.hpp REQUIRED)
if(NOT TARGET chorus_asio)
  add_library(chorus_asio INTERFACE)
  target_include_directories(chorus_asio SYSTEM INTERFACE ${ASIO_INCLUDE_DIR})
  target_compile_definitions(chorus_asio INTERFACE ASIO_STANDALONE
                                                   ASIO_NO_DEPRECATED)
  target_link_libraries(chorus_asio INTERFACE Threads::Threads
                                              OpenSSL::SSL OpenSSL::Crypto)
  add_library(chorus::asio ALIAS chorus_asio)
endif()
