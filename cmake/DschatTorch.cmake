# Finds LibTorch inside the pinned torch wheel of the project's virtual environment (tools/setup.sh makes it),
# or wherever DSCHAT_TORCH_DIR / Torch_DIR points.
if(NOT Torch_DIR)
  set(_venv_candidates "${DSCHAT_TORCH_DIR}" "$ENV{DSCHAT_VENV}" "${CMAKE_CURRENT_LIST_DIR}/../.venv")
  foreach(_venv IN LISTS _venv_candidates)
    if(_venv)
      file(GLOB _torch_cmake "${_venv}/lib/python3*/site-packages/torch/share/cmake/Torch"
           "${_venv}/share/cmake/Torch")
      if(_torch_cmake)
        list(GET _torch_cmake 0 Torch_DIR)
        break()
      endif()
    endif()
  endforeach()
endif()
# The wheel is CUDA-built and its CMake package looks for the CUDA toolkit even when only the CPU libraries
# are wanted; a CPU consumer links torch_cpu + c10 and never touches the CUDA ones.
# Name the GPU architectures instead of letting it probe for GPUs with a try_run (none here; H200 on the GPU machine).
if(NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0" CACHE STRING "CUDA architectures for the CUDA plugins (A100, H100/H200)")
endif()
set(CMAKE_CUDA_STANDARD 17)
find_package(Torch 2.11 REQUIRED CONFIG)
get_filename_component(DSCHAT_TORCH_LIB_DIR "${TORCH_INSTALL_PREFIX}/lib" ABSOLUTE)
if(DSCHAT_CUDA)
  # Not `torch`: it adds libtorch.so, a shim that exports its own copy of std::filesystem, and an executable
  # bound to that copy crashed in remove_all (a call through a null pointer). torch_cuda_library is torch_cuda
  # linked --no-as-needed, so its CUDA kernels register even where no symbol of it is referenced.
  set(DSCHAT_TORCH_LIBRARIES torch_cpu_library torch_cuda_library)
else()
  set(DSCHAT_TORCH_LIBRARIES torch_cpu c10)
endif()
# torch_cpu does not carry the C++ frontend's include folder (the `torch` target does).
set(DSCHAT_TORCH_API_INCLUDE "${TORCH_INSTALL_PREFIX}/include/torch/csrc/api/include")
# The wheel ships fmt 12 headers in its include folder, which shadow Debian's fmt 9: dschat uses exactly those,
# header-only (FMT_HEADER_ONLY, set on dschat_sdk), so one fmt version is compiled everywhere and none is linked.
