// `mx completion bash|zsh`: a completion script generated from mx's own CLI11 command tree
// at run time, so every subcommand and option added to mx appears in it without editing
// a hand-written script. `mx serve` takes mx-server's flags from its own parser, which
// lives in the server library: they are read from `mx serve --help`.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "cli/tool_commands.h"
#include "common/version.h"

namespace mx::cli {
namespace {

// One command of the tree: "mx", "mx cache", "mx cache ls".
struct Node {
  std::string path;
  std::vector<std::string> subcommands;
  std::vector<std::string> options;                         // every spelling: --name, -n
  std::vector<std::string> value_options;                   // those that take a value
  std::vector<std::string> dir_options;                     // values that are directories (--*-dir)
  std::map<std::string, std::vector<std::string>> choices;  // option -> allowed values
  std::vector<std::string> positional_choices;              // `mx completion bash|zsh`
};

// Names go into shell code unquoted inside patterns and word lists: only plain ones.
bool IsPlainName(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return false;
  }
  return true;
}

// "TEXT:{model,dataset,space}" -> model dataset space (CLI::IsMember's description).
std::vector<std::string> ChoicesOf(const std::string& type_name) {
  std::vector<std::string> out;
  size_t open = type_name.find('{'), close = type_name.find('}');
  if (open == std::string::npos || close == std::string::npos || close < open) return out;
  std::stringstream items(type_name.substr(open + 1, close - open - 1));
  for (std::string item; std::getline(items, item, ',');) {
    if (IsPlainName(item)) out.push_back(item);
  }
  return out;
}

// mx-server's options, from `mx serve --help` (this binary): pairs of (spelling, takes a
// value). Empty when that fails; completion then offers no serve options.
std::vector<std::pair<std::string, bool>> ServerOptions() {
  std::vector<std::pair<std::string, bool>> out;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return out;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) ::dup2(null, STDERR_FILENO);
    ::execl("/proc/self/exe", "mx", "serve", "--help", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0 && text.size() < (1 << 20);) {
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  if (pid > 0) ::waitpid(pid, nullptr, 0);
  std::stringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    size_t start = line.find_first_not_of(' ');
    if (start == std::string::npos || line[start] != '-') continue;
    // "  --port TEXT      gRPC port": one space before a type name, a run of spaces before
    // the description.
    size_t end = line.find(' ', start);
    std::string names = line.substr(start, end == std::string::npos ? end : end - start);
    bool takes_value = end != std::string::npos && end + 1 < line.size() && line[end + 1] != ' ';
    std::stringstream spellings(names);
    for (std::string n; std::getline(spellings, n, ',');) {
      if (n.size() > 1 && n[0] == '-' && IsPlainName(n)) out.emplace_back(n, takes_value);
    }
  }
  return out;
}

void Collect(const CLI::App* app, const std::string& path, std::vector<Node>* out) {
  Node node;
  node.path = path;
  for (const CLI::Option* opt : app->get_options()) {
    if (opt->get_positional()) {
      for (const auto& c : ChoicesOf(opt->get_type_name())) node.positional_choices.push_back(c);
      continue;
    }
    bool takes_value = opt->get_items_expected_max() > 0;  // flags expect 0 items
    std::vector<std::string> spellings;
    for (const auto& n : opt->get_lnames()) spellings.push_back("--" + n);
    for (const auto& n : opt->get_snames()) spellings.push_back("-" + n);
    for (const auto& s : spellings) {
      if (!IsPlainName(s)) continue;
      node.options.push_back(s);
      if (!takes_value) continue;
      node.value_options.push_back(s);
      if (s.size() > 4 && s.compare(s.size() - 4, 4, "-dir") == 0) node.dir_options.push_back(s);
      auto choices = ChoicesOf(opt->get_type_name());
      if (!choices.empty()) node.choices[s] = choices;
    }
  }
  std::vector<const CLI::App*> subs;
  for (const CLI::App* sub : app->get_subcommands([](const CLI::App*) { return true; })) {
    if (IsPlainName(sub->get_name())) subs.push_back(sub);
  }
  for (const CLI::App* sub : subs) node.subcommands.push_back(sub->get_name());
  if (path == "mx serve") {
    for (const auto& [name, takes_value] : ServerOptions()) {
      if (std::find(node.options.begin(), node.options.end(), name) != node.options.end())
        continue;  // -h,--help: already there
      node.options.push_back(name);
      if (takes_value) node.value_options.push_back(name);
      if (takes_value && name.size() > 4 && name.compare(name.size() - 4, 4, "-dir") == 0)
        node.dir_options.push_back(name);
    }
  }
  out->push_back(node);
  for (const CLI::App* sub : subs) Collect(sub, path + " " + sub->get_name(), out);
}

std::string Join(const std::vector<std::string>& words, const std::string& sep = " ") {
  std::string s;
  for (const auto& w : words) s += (s.empty() ? "" : sep) + w;
  return s;
}

// `"mx cache --cache-dir"|"mx cache ls --cache-dir"`: case patterns for (command, option).
std::string Patterns(const std::vector<Node>& nodes, std::vector<std::string> Node::*field) {
  std::vector<std::string> p;
  for (const auto& n : nodes) {
    for (const auto& o : n.*field) p.push_back("\"" + n.path + " " + o + "\"");
  }
  return Join(p, "|");
}

std::string BashScript(const std::vector<Node>& nodes) {
  std::ostringstream s;
  s << "# bash completion for mx, generated by `mx completion bash` from mx's command tree\n"
    << "# (" << BuildDescription("mx") << "). Load it with:  source <(mx completion bash)\n"
    << "_mx_completion() {\n"
    << "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"\" cmd=\"mx\" i w\n"
    << "  (( COMP_CWORD > 0 )) && prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n"
    << "  for (( i = 1; i < COMP_CWORD; i++ )); do\n"
    << "    w=\"${COMP_WORDS[i]}\"\n"
    << "    case \"$cmd $w\" in\n";
  std::vector<std::string> paths;
  for (const auto& n : nodes) {
    if (n.path != "mx") paths.push_back("\"" + n.path + "\"");
  }
  s << "      " << Join(paths, "|") << ") cmd=\"$cmd $w\" ;;\n"
    << "    esac\n"
    << "  done\n"
    << "  case \"$cmd $prev\" in\n";
  for (const auto& n : nodes) {
    for (const auto& [opt, values] : n.choices) {
      s << "    \"" << n.path << " " << opt << "\") COMPREPLY=( $(compgen -W \"" << Join(values)
        << "\" -- \"$cur\") ); return ;;\n";
    }
  }
  if (std::string p = Patterns(nodes, &Node::dir_options); !p.empty())
    s << "    " << p << ") COMPREPLY=( $(compgen -d -- \"$cur\") ); return ;;\n";
  if (std::string p = Patterns(nodes, &Node::value_options); !p.empty())
    s << "    " << p << ") COMPREPLY=( $(compgen -f -- \"$cur\") ); return ;;\n";
  s << "  esac\n"
    << "  local subs=\"\" opts=\"\" pos=\"\"\n"
    << "  case \"$cmd\" in\n";
  for (const auto& n : nodes) {
    s << "    \"" << n.path << "\") subs=\"" << Join(n.subcommands) << "\"; opts=\""
      << Join(n.options) << "\"; pos=\"" << Join(n.positional_choices) << "\" ;;\n";
  }
  s << "  esac\n"
    << "  if [[ \"$cur\" == -* ]]; then\n"
    << "    COMPREPLY=( $(compgen -W \"$opts\" -- \"$cur\") )\n"
    << "  elif [[ -n \"$subs\" ]]; then\n"
    << "    COMPREPLY=( $(compgen -W \"$subs\" -- \"$cur\") )\n"
    << "  elif [[ -n \"$pos\" ]]; then\n"
    << "    COMPREPLY=( $(compgen -W \"$pos\" -- \"$cur\") )\n"
    << "  else\n"
    << "    COMPREPLY=( $(compgen -f -- \"$cur\") )\n"
    << "  fi\n"
    << "}\n"
    << "complete -o bashdefault -o default -F _mx_completion mx\n";
  return s.str();
}

std::string ZshScript(const std::vector<Node>& nodes) {
  std::ostringstream s;
  s << "#compdef mx\n"
    << "# zsh completion for mx, generated by `mx completion zsh` from mx's command tree\n"
    << "# (" << BuildDescription("mx") << "). Load it with:  source <(mx completion zsh)\n"
    << "# (after compinit), or save it as _mx in a directory of $fpath.\n"
    << "_mx() {\n"
    << "  local cur=\"${words[CURRENT]}\" prev=\"${words[CURRENT-1]}\" cmd=\"mx\" i w\n"
    << "  local -a subs opts pos\n"
    << "  for (( i = 2; i < CURRENT; i++ )); do\n"
    << "    w=\"${words[i]}\"\n"
    << "    case \"$cmd $w\" in\n";
  std::vector<std::string> paths;
  for (const auto& n : nodes) {
    if (n.path != "mx") paths.push_back("\"" + n.path + "\"");
  }
  s << "      (" << Join(paths, "|") << ") cmd=\"$cmd $w\" ;;\n"
    << "    esac\n"
    << "  done\n"
    << "  case \"$cmd $prev\" in\n";
  for (const auto& n : nodes) {
    for (const auto& [opt, values] : n.choices) {
      s << "    (\"" << n.path << " " << opt << "\") compadd -- " << Join(values)
        << "; return ;;\n";
    }
  }
  if (std::string p = Patterns(nodes, &Node::dir_options); !p.empty())
    s << "    (" << p << ") _files -/; return ;;\n";
  if (std::string p = Patterns(nodes, &Node::value_options); !p.empty())
    s << "    (" << p << ") _files; return ;;\n";
  s << "  esac\n"
    << "  case \"$cmd\" in\n";
  for (const auto& n : nodes) {
    s << "    (\"" << n.path << "\") subs=(" << Join(n.subcommands) << "); opts=("
      << Join(n.options) << "); pos=(" << Join(n.positional_choices) << ") ;;\n";
  }
  s << "  esac\n"
    << "  if [[ \"$cur\" == -* ]]; then\n"
    << "    compadd -- \"${opts[@]}\"\n"
    << "  elif (( ${#subs} )); then\n"
    << "    compadd -- \"${subs[@]}\"\n"
    << "  elif (( ${#pos} )); then\n"
    << "    compadd -- \"${pos[@]}\"\n"
    << "  else\n"
    << "    _files\n"
    << "  fi\n"
    << "}\n"
    << "if [[ \"${funcstack[1]}\" == _mx ]]; then\n"
    << "  _mx \"$@\"\n"
    << "elif (( $+functions[compdef] )); then\n"
    << "  compdef _mx mx\n"
    << "fi\n";
  return s.str();
}

}  // namespace

void RegisterCompletion(CLI::App& app, int& exit_code) {
  auto shell = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "completion", "Print a shell completion script: source <(mx completion bash)");
  cmd->add_option("shell", *shell, "bash or zsh")
      ->required()
      ->check(CLI::IsMember({"bash", "zsh"}));
  cmd->callback([shell, &app, &exit_code] {
    std::vector<Node> nodes;
    Collect(&app, "mx", &nodes);
    std::string script = *shell == "zsh" ? ZshScript(nodes) : BashScript(nodes);
    std::fwrite(script.data(), 1, script.size(), stdout);
    exit_code = 0;
  });
}

}  // namespace mx::cli
