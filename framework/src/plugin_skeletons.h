#pragma once
// The texts `dschat plugin new` writes (plugin_skeletons.cpp), with placeholders that plugin_new_command.cpp
// fills: {{name}} (the plugin's name), {{registered}} (the name its factory registers: the model_type for a
// model family, else {{name}}), {{ident}} (a C identifier), {{class}} (a C++ class name) and {{kind}}.
#include <map>
#include <string>

namespace dschat {

// CMakeLists.txt: find_package(dschat), dschat_add_plugin, the load test and {{harness}}, one of the two below.
extern const char* const kPluginCMakeLists;
extern const char* const kHarnessTest;       // dschat_add_plugin_test on the SDK's tiny model
extern const char* const kModelHarnessTest;  // the same on tiny/config.json, a model of the family
extern const char* const kTinyModelConfig;   // tiny/config.json for a model plugin

// NAME.cpp for each kind the scaffold writes, by kind ("model", "strategy", "generation", "algorithm", "hook").
const std::map<std::string, const char*>& plugin_skeletons();

}  // namespace dschat
