// mx: model cache and distribution. Subcommands are thin: parse flags, call the library,
// print. Errors go to stderr; stdout carries only results (paths, tables, JSON).
#include <cstring>
#include <string>

#include "cli/commands.h"
#include "common/log.h"
#include "common/version.h"
#include "server/server.h"

namespace {

// Takes the value of --token out of argv and overwrites it in place, so the secret does
// not stay visible in /proc/<pid>/cmdline or `ps` for the whole download.
std::optional<std::string> ScrubSecretFlag(int argc, char** argv, const char* flag) {
  std::optional<std::string> value;
  size_t flag_len = std::strlen(flag);
  for (int i = 1; i < argc; ++i) {
    char* arg = argv[i];
    char* secret = nullptr;
    if (std::strcmp(arg, flag) == 0 && i + 1 < argc) {
      secret = argv[i + 1];
    } else if (std::strncmp(arg, flag, flag_len) == 0 && arg[flag_len] == '=') {
      secret = arg + flag_len + 1;
    }
    if (secret != nullptr) {
      value = std::string(secret);
      std::memset(secret, '*', std::strlen(secret));
    }
  }
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  // `mx serve ...` is mx-server with the same flags.
  if (argc >= 2 && std::strcmp(argv[1], "serve") == 0)
    return mx::server::ServerMain(argc - 1, argv + 1);
  mx::cli::GlobalFlags flags;
  flags.token = ScrubSecretFlag(argc, argv, "--token");
  CLI::App app{"mx: fill, serve and stream a Hugging Face model cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", mx::BuildDescription("mx"));
  int exit_code = 0;
  mx::cli::RegisterDownload(app, flags, exit_code);
  mx::cli::RegisterCache(app, flags, exit_code);
  mx::cli::RegisterStream(app, flags, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return exit_code;
}
