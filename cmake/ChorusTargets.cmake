# Helpers shared by the library, app, test and bench CMakeLists.

# Warnings for our own code (dependencies are included as SYSTEM).
function(chorus_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic
                                           -Wno-unused-parameter
                                           -Wno-missing-field-initializers)
  # GCC's -Wmismatched-new-delete pairs Asio's coroutine frames' unsized
  # operator new with their sized operator delete after inlining and calls
  # it a mismatch (GCC PR middle-end/109224, a false positive; GCC 12 said
  # so in server.cpp and remote_oracle.cpp). The pairing is well-formed, and
  # the ASan build still catches a real mismatch at run time.
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE -Wno-mismatched-new-delete)
  endif()
endfunction()

# The torch headers, precompiled once (chorus_torch_pch) and reused by every
# target that includes them: chorus_use_torch_pch(<target>).
function(chorus_add_torch_pch)
  if(NOT CHORUS_USE_PCH)
    return()
  endif()
  add_library(chorus_torch_pch OBJECT ${PROJECT_SOURCE_DIR}/cmake/torch_pch.cpp)
  target_link_libraries(chorus_torch_pch PRIVATE chorus::torch)
  chorus_set_warnings(chorus_torch_pch)
  target_precompile_headers(chorus_torch_pch PRIVATE <torch/torch.h>)
endfunction()

function(chorus_use_torch_pch target)
  if(CHORUS_USE_PCH)
    target_precompile_headers(${target} REUSE_FROM chorus_torch_pch)
  endif()
endfunction()

# chorus_add_library(<lib> SOURCES ... [DEPS ...] [PRIVATE_DEPS ...] [TORCH_PCH])
# Declares chorus_<lib> with alias chorus::<lib>, public headers under
# <lib>/include and private sources under <lib>/src.
function(chorus_add_library lib)
  cmake_parse_arguments(ARG "TORCH_PCH" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  set(target chorus_${lib})
  add_library(${target} STATIC ${ARG_SOURCES})
  add_library(chorus::${lib} ALIAS ${target})
  target_include_directories(${target} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>)
  target_link_libraries(${target} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  chorus_set_warnings(${target})
  if(ARG_TORCH_PCH)
    chorus_use_torch_pch(${target})
  endif()
endfunction()
