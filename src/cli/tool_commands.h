// The `mx` subcommands about mx itself rather than about models: `mx doctor` (is this
// machine set up: hub, token, cache, locks, space, server) and `mx completion` (shell
// completion scripts generated from the command tree).
#pragma once

#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace mx::cli {

// `mx doctor`: one line per check, exit code 1 when any check failed.
void RegisterDoctor(CLI::App& app, GlobalFlags& flags, int& exit_code);

// `mx completion bash|zsh`: prints a completion script for the whole command tree of
// `app` as it is when the command runs (register it, and everything else, before parsing).
void RegisterCompletion(CLI::App& app, int& exit_code);

}  // namespace mx::cli
