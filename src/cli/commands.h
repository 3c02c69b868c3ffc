// The `mx` subcommands. Each Register* adds its subcommand to the app and returns the
// exit code slot it fills: 0 success, 1 failure, 2 bad arguments.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "common/status.h"

namespace mx::cli {

struct GlobalFlags {
  std::optional<std::string> token;  // taken out of argv before parsing (see main.cc)
  bool quiet = false;
  bool json = false;
};

void RegisterDownload(CLI::App& app, GlobalFlags& flags, int& exit_code);
void RegisterCache(CLI::App& app, GlobalFlags& flags, int& exit_code);
void RegisterStream(CLI::App& app, GlobalFlags& flags, int& exit_code);

// Prints "error: <message>" to stderr and returns the exit code for the status.
int ReportError(const Status& status);

}  // namespace mx::cli
