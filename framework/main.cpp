#include "dschat/framework/cli.h"

int main(int argc, char** argv) { return dschat::cli_main(argc, argv); }
