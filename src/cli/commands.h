// The `mx` subcommands. Each Register* adds its subcommand to the app and returns the
// exit code slot it fills: 0 success, 1 failure, 2 bad arguments.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
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

// Prints "error: <message>" to stderr and returns the exit code for the status. The
// message is passed through EscapeControl: it may quote a server or a file.
int ReportError(const Status& status);

// Exit code 2 with a message when `revision` is not a safe ref name (hub::ValidateRevision):
// a revision becomes a path under refs/ and snapshots/, so "../x" is refused before any
// network or file access. Returns 0 when it is fine.
int RefuseBadRevision(const std::string& revision);

// Terminal-safe text for anything printed that came from the network or the file system.
std::string Shown(const std::string& text);

// JSON text of `j`, with invalid UTF-8 replaced (nlohmann would throw on it); control
// characters come out as \u00XX escapes.
std::string JsonText(const nlohmann::json& j, int indent = -1);

}  // namespace mx::cli
