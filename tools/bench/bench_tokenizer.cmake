# bench_tokenizer: include()d from tools/bench/CMakeLists.txt. Run it through bench_tokenizer.py.
add_executable(bench_tokenizer ${CMAKE_CURRENT_LIST_DIR}/bench_tokenizer.cpp)
target_link_libraries(bench_tokenizer PRIVATE dschat_sdk)
if(COMMAND dschat_use_shared_pch)
  dschat_use_shared_pch(bench_tokenizer)
endif()
