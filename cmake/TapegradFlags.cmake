# Compiler flags shared by every tapegrad target (applied through tapegrad_set_flags()).
include(CheckCXXCompilerFlag)

set(TAPEGRAD_ARCH_FLAGS "")
if(TAPEGRAD_NATIVE)
  check_cxx_compiler_flag("-march=native" TAPEGRAD_HAS_MARCH_NATIVE)
  if(TAPEGRAD_HAS_MARCH_NATIVE)
    list(APPEND TAPEGRAD_ARCH_FLAGS -march=native)
    # GCC auto-vectorises with 256-bit registers on AVX-512 CPUs unless told otherwise.
    check_cxx_compiler_flag("-mprefer-vector-width=512" TAPEGRAD_HAS_PREFER_512)
    if(TAPEGRAD_HAS_PREFER_512)
      list(APPEND TAPEGRAD_ARCH_FLAGS -mprefer-vector-width=512)
    endif()
  endif()
endif()

set(TAPEGRAD_SANITIZE_FLAGS "")
if(TAPEGRAD_SANITIZE)
  set(TAPEGRAD_SANITIZE_FLAGS -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
endif()

function(tapegrad_set_flags target)
  # -Wno-missing-field-initializers: GCC 12 warns for designated initializers that leave members
  # at their defaults ({.lr = 1e-3}), the idiom every options struct here is used with.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
                                           $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized> ${TAPEGRAD_ARCH_FLAGS}
                                           ${TAPEGRAD_SANITIZE_FLAGS})
  if(TAPEGRAD_SANITIZE)
    target_link_options(${target} PUBLIC ${TAPEGRAD_SANITIZE_FLAGS})
  endif()
endfunction()

# A tapegrad library in one layer folder: sources, include root, flags.
function(tapegrad_add_library name)
  add_library(${name} STATIC ${ARGN})
  target_include_directories(${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
                                            $<INSTALL_INTERFACE:include/tapegrad>)
  target_compile_features(${name} PUBLIC cxx_std_20)
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  tapegrad_set_flags(${name})
endfunction()
