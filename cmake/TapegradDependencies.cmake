# Third-party packages (Debian bookworm: scripts/install-deps.sh installs them).
find_package(Threads REQUIRED)
find_package(fmt 9 REQUIRED)
find_package(TBB 2021 REQUIRED COMPONENTS tbb)
find_package(xsimd 8 REQUIRED)
# xsimd 8.1's exported target links a library named "xtl" that its config never defines.
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
