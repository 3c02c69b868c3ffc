// mx-server: the ModelExpress-compatible cache server. See server.h.
#include "server/server.h"

int main(int argc, char** argv) { return mx::server::ServerMain(argc, argv); }
