# Third-party packages (Debian bookworm: scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(fmt 9 REQUIRED)
find_package(TBB 2021 REQUIRED COMPONENTS tbb)
find_package(xsimd 8 REQUIRED)
# xsimd 8.1's exported target links a library named "xtl" that its config never defines.
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
# Header-only dependencies are used through their include folders (not their targets), so that
# the installed tapegrad package does not ask its users to find them.
get_target_property(TAPEGRAD_XSIMD_INCLUDE xsimd INTERFACE_INCLUDE_DIRECTORIES)

# nn/: checkpoints (JSON headers), gzip'd data sets, PNG output.
find_package(ZLIB REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
get_target_property(TAPEGRAD_JSON_INCLUDE nlohmann_json::nlohmann_json INTERFACE_INCLUDE_DIRECTORIES)
find_library(TAPEGRAD_STB_LIBRARY stb REQUIRED)  # libstb-dev: stb_image_write's implementation
