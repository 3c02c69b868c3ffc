// `mx p2p serve|pull|sources`: peer-to-peer weights through mx-server's P2pService.
#pragma once

#include <CLI/CLI.hpp>

namespace mx::cli {

void RegisterP2p(CLI::App& app, int& exit_code);

}  // namespace mx::cli
