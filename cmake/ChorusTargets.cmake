# Helpers shared by the library, app, test and bench CMakeLists.

# Warnings for our own code (dependencies are included as SYSTEM).
function(chorus_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic
                                           -Wno-unused-parameter
                                           -Wno-missing-field-initializers)
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
  if(ARG_TORCH_PCH AND CHORUS_USE_PCH)
    target_precompile_headers(${target} PRIVATE <torch/torch.h>)
  endif()
endfunction()
