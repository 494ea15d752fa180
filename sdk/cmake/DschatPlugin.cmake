# dschat_add_plugin(NAME SOURCES ... [LIBRARIES ...] [DEFINITIONS ...] [OUTPUT_DIRECTORY dir] [NO_INSTALL])
#
# Builds one plugin library the way the host expects: a MODULE library with hidden visibility, no undefined
# symbols (-z defs), LibTorch and the SDK linked dynamically. In-tree plugins and third-party plugins built
# against the installed SDK (find_package(dschat)) use this same function.
function(dschat_add_plugin NAME)
  cmake_parse_arguments(ARG "NO_INSTALL" "OUTPUT_DIRECTORY" "SOURCES;LIBRARIES;DEFINITIONS" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "dschat_add_plugin(${NAME}): SOURCES is required")
  endif()
  set(target dschat_plugin_${NAME})
  add_library(${target} MODULE ${ARG_SOURCES})
  set_target_properties(${target} PROPERTIES
    OUTPUT_NAME "dschat-${NAME}"
    PREFIX "lib"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY})
  elseif(DEFINED DSCHAT_PLUGIN_OUTPUT_DIR)
    set_target_properties(${target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${DSCHAT_PLUGIN_OUTPUT_DIR})
  endif()
  target_link_libraries(${target} PRIVATE dschat::sdk ${ARG_LIBRARIES})
  target_compile_definitions(${target} PRIVATE ${ARG_DEFINITIONS})
  target_link_options(${target} PRIVATE -Wl,-z,defs)
  if(TARGET dschat_sdk AND DSCHAT_PCH AND NOT ARG_DEFINITIONS)
    target_precompile_headers(${target} REUSE_FROM dschat_sdk)
  endif()
  if(TARGET dschat_sdk AND NOT ARG_NO_INSTALL)  # in-tree: installed beside the host
    install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/dschat/plugins)
  endif()
endfunction()

# dschat_add_plugin_test(NAME PLUGIN [MODEL dir] [STAGE file.toml] [ARGS ...])
#
# A ctest that runs the SDK's harness on plugin PLUGIN (the NAME given to dschat_add_plugin): the installed host
# loads it as `dschat run` would, checks a model family against transformers on MODEL (a folder written by
# ${DSCHAT_TESTING_DIR}/make_parity_fixture.py), and runs a short stage with it (STAGE's [[stage]] tables, or an
# sft stage). See `dschat plugin test --help`.
function(dschat_add_plugin_test NAME PLUGIN)
  cmake_parse_arguments(ARG "" "MODEL;STAGE" "ARGS" ${ARGN})
  if(NOT DSCHAT_EXECUTABLE)
    message(FATAL_ERROR "dschat_add_plugin_test(${NAME}): DSCHAT_EXECUTABLE is not set (find_package(dschat) sets it)")
  endif()
  set(command ${DSCHAT_EXECUTABLE} plugin test $<TARGET_FILE:dschat_plugin_${PLUGIN}>
      --work ${CMAKE_CURRENT_BINARY_DIR}/plugin-test-${NAME})
  if(ARG_MODEL)
    list(APPEND command --model ${ARG_MODEL})
  endif()
  if(ARG_STAGE)
    list(APPEND command --stage ${ARG_STAGE})
  endif()
  add_test(NAME ${NAME} COMMAND ${command} ${ARG_ARGS})
  set_tests_properties(${NAME} PROPERTIES TIMEOUT 600)
endfunction()
