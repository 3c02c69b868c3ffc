// The worker-side commands, with modelexpress-cli's names and shapes: `mx health`,
// `mx model download|list|status|clear|clear-all|validate|stats`, `mx api send`, and
// `mx load` (the loader chain).
// Each takes modelexpress-cli's options (-e/--endpoint, -t/--timeout, -f/--format,
// -q, --cache-path, --no-shared-storage, --transfer-chunk-size, --tls-ca), on the command
// group and on every command under it. Exit codes: 0 success, 1 failure, 2 bad arguments.
#pragma once

#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace mx::cli {

void RegisterHealth(CLI::App& app, int& exit_code);
void RegisterModel(CLI::App& app, int& exit_code);
void RegisterApi(CLI::App& app, int& exit_code);
void RegisterLoad(CLI::App& app, int& exit_code);

}  // namespace mx::cli
