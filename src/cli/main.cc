// mx: model cache and distribution. Subcommands are thin: parse flags, call the library,
// print. Errors go to stderr; stdout carries only results (paths, tables, JSON).
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/model_commands.h"
#include "cli/p2p_commands.h"
#include "cli/tool_commands.h"
#include "common/log.h"
#include "common/text.h"
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

// `hf` prints "models"/"datasets" (as `mx cache ls --json` does) where its flags take
// "model"/"dataset": every --repo-type accepts both.
std::string SingularRepoType(std::string text) {
  if (text == "models" || text == "datasets" || text == "spaces") text.pop_back();
  return text;
}

// Settings every subcommand shares, applied after all of them are registered so that
// they hold wherever an option was declared: -v/--verbose on every command (it sets
// MX_LOG_LEVEL=debug, which InitLogging obeys), `--token TOKEN` in help, plural repo
// types.
void ApplySharedSettings(CLI::App* app) {
  if (app->get_option_no_throw("--verbose") == nullptr && app->get_name() != "serve") {
    app->add_flag_callback(
        "-v,--verbose", [] { ::setenv("MX_LOG_LEVEL", "debug", 1); },
        "Log what mx decides and does (debug level)");
  }
  if (CLI::Option* token = app->get_option_no_throw("--token")) token->type_name("TOKEN");
  if (CLI::Option* type = app->get_option_no_throw("--repo-type")) {
    type->transform(SingularRepoType, "", "plural");
  }
  for (CLI::App* sub : app->get_subcommands({})) ApplySharedSettings(sub);
}

// Optimal string alignment distance (Levenshtein plus adjacent swaps, so "donwload" is
// one edit from "download").
size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// After a parse error: when a word in a command's place names no subcommand ("mx donwload",
// "mx cache lss"), says so and suggests the nearest one. True when it printed that.
bool ExplainUnknownCommand(CLI::App& app, int argc, char** argv) {
  CLI::App* level = &app;
  std::string path = "mx";
  for (int i = 1; i < argc; ++i) {
    std::string word = argv[i];
    if (word.empty() || word[0] == '-') continue;  // the command levels take only flags
    // After an option this level does not know ("mx cache --cache-dir DIR ls"), the word
    // is likely its value: leave that error to CLI11, which names the option.
    std::string previous = i > 1 ? argv[i - 1] : "";
    if (!previous.empty() && previous[0] == '-' && previous.find('=') == std::string::npos &&
        level->get_option_no_throw(previous) == nullptr) {
      return false;
    }
    std::vector<CLI::App*> subs = level->get_subcommands({});
    if (subs.empty()) return false;  // a leaf: the rest are its arguments
    CLI::App* next = nullptr;
    std::string best;
    size_t best_distance = SIZE_MAX;
    for (CLI::App* sub : subs) {
      if (sub->check_name(word)) next = sub;
      size_t d = EditDistance(word, sub->get_name());
      if (d < best_distance) best_distance = d, best = sub->get_name();
    }
    if (next != nullptr) {
      level = next;
      path += " " + next->get_name();
      continue;
    }
    std::string message = "error: unknown command '" + mx::EscapeControl(word) + "'";
    // Suggest only what is plausibly a typo: at most a third of the word changed.
    if (best_distance <= std::max<size_t>(2, best.size() / 3)) {
      message += "; did you mean '" + best + "'?";
    } else {
      message += "; '" + path + " --help' lists the commands";
    }
    std::fprintf(stderr, "%s\n", message.c_str());
    return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  // `mx serve ...` is mx-server with the same flags (its own parser, its own --help).
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
  mx::cli::RegisterDoctor(app, flags, exit_code);
  mx::cli::RegisterHealth(app, exit_code);
  mx::cli::RegisterModel(app, exit_code);
  mx::cli::RegisterApi(app, exit_code);
  mx::cli::RegisterLoad(app, exit_code);
  mx::cli::RegisterP2p(app, exit_code);
  mx::cli::RegisterCompletion(app, exit_code);
  // Listed for `mx --help` and completion; the dispatch above runs it.
  app.add_subcommand("serve",
                     "Run mx-server in this process, with mx-server's flags (`mx serve --help` "
                     "lists them: --port, --mirror-port, --cache-dir, --config, ...)")
      ->prefix_command()
      ->callback([&exit_code, &app] {
        // Reached only with flags before it (`mx -v serve ...`): the server's own parser
        // gets the words after "serve".
        std::vector<std::string> words = app.get_subcommand("serve")->remaining();
        std::vector<char*> server_argv{const_cast<char*>("serve")};
        for (auto& w : words) server_argv.push_back(w.data());
        server_argv.push_back(nullptr);
        exit_code =
            mx::server::ServerMain(static_cast<int>(server_argv.size()) - 1, server_argv.data());
      });
  ApplySharedSettings(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0 && ExplainUnknownCommand(app, argc, argv)) return 2;
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return exit_code;
}
