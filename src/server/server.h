// RunServer: mx-server's main loop. Opens the metadata store, starts the gRPC services,
// the HF mirror and /metrics, the reaper (stale sources, eviction), and runs until
// SIGINT/SIGTERM.
#pragma once

namespace mx::server {

// Entry point of `mx-server` and `mx serve`: argv holds the server's own flags.
int ServerMain(int argc, char** argv);

}  // namespace mx::server
