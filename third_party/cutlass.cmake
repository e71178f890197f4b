# Locate CUTLASS/CuTe headers from the nvidia-cutlass wheel without importing it (its Python
# dependencies may be absent), or from FASTOPS_CUTLASS_DIR. Only translation units that need CuTe
# add FASTOPS_CUTLASS_DIR to their include path (it costs seconds per TU); none do yet.
set(FASTOPS_WITH_CUTLASS OFF)
if(FASTOPS_WITH_CUDA)
  set(FASTOPS_CUTLASS_DIR "$ENV{FASTOPS_CUTLASS_DIR}" CACHE PATH "directory containing cutlass/cutlass.h")
  if(NOT FASTOPS_CUTLASS_DIR)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import importlib.util as u, os; s = u.find_spec('cutlass_library'); print(os.path.join(s.submodule_search_locations[0], 'source', 'include') if s else '')"
      OUTPUT_VARIABLE FASTOPS_CUTLASS_DIR OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
  if(FASTOPS_CUTLASS_DIR AND EXISTS "${FASTOPS_CUTLASS_DIR}/cutlass/cutlass.h")
    set(FASTOPS_WITH_CUTLASS ON)
  endif()
endif()
message(STATUS "fastops: CUTLASS headers: ${FASTOPS_WITH_CUTLASS} ${FASTOPS_CUTLASS_DIR}")
