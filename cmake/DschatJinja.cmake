# dschat_jinja: llama.cpp's Jinja engine, which runs HF chat templates. tools/setup.sh puts its sources (MIT) under
# .cache/third_party/llama-jinja (tools/fetch_jinja.sh); it is built here as a static, hidden-symbol library that
# only the host links, against the system nlohmann-json the rest of dschat uses.
set(DSCHAT_JINJA_DIR "${CMAKE_SOURCE_DIR}/.cache/third_party/llama-jinja" CACHE PATH
    "llama.cpp Jinja engine sources (tools/fetch_jinja.sh)")
if(NOT EXISTS "${DSCHAT_JINJA_DIR}/common/jinja/runtime.cpp")
  message(FATAL_ERROR "llama.cpp's Jinja engine is not in ${DSCHAT_JINJA_DIR}: run tools/setup.sh")
endif()
add_library(dschat_jinja STATIC
  ${DSCHAT_JINJA_DIR}/common/jinja/lexer.cpp ${DSCHAT_JINJA_DIR}/common/jinja/parser.cpp
  ${DSCHAT_JINJA_DIR}/common/jinja/runtime.cpp ${DSCHAT_JINJA_DIR}/common/jinja/string.cpp
  ${DSCHAT_JINJA_DIR}/common/jinja/value.cpp ${DSCHAT_JINJA_DIR}/common/json.cpp
  ${DSCHAT_JINJA_DIR}/common/unicode.cpp)
set_target_properties(dschat_jinja PROPERTIES CXX_STANDARD 17)
target_include_directories(dschat_jinja SYSTEM PUBLIC ${DSCHAT_JINJA_DIR}/common
                           PRIVATE ${CMAKE_SOURCE_DIR}/cmake/shims)
target_link_libraries(dschat_jinja PRIVATE nlohmann_json::nlohmann_json)
target_compile_options(dschat_jinja PRIVATE -w)  # third-party code: its warnings are not ours to fix
