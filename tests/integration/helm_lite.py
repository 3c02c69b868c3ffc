"""Checks and a small renderer for the Helm chart in deploy/helm/mx (Helm itself is not
installable here).

- value_refs / missing_value_refs: every `.Values.a.b` in a template must exist in values.yaml.
- check_balance: every {{ if / range / with / define / block }} has its {{ end }}, and
  {{ else }} only appears inside if / with / range.
- render: a Go-template subset (the actions and Sprig functions this chart uses: if/else,
  with, range over lists and maps, define/include, and, or, not, eq, gt, int, has, hasKey,
  default, printf, quote, toYaml, nindent, indent, trunc, trimSuffix, replace, fail), with
  Go's whitespace trimming and truthiness. Anything outside the subset raises, so a
  template that grows past it fails the test instead of rendering wrongly.
"""

import json
import re
import yaml

ACTION_RE = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
VALUES_RE = re.compile(r"(?<![\w$])\$?\.Values((?:\.[A-Za-z0-9_-]+)+)")
TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|:=|[()|,]|[^\s()|,]+')
OPENERS = ("if", "range", "with", "define", "block")


class RenderError(Exception):
    pass


class TemplateFail(Exception):
    """The chart's own `fail`: a refusal at render time."""


def actions(text):
    """The inside of every {{ }} action, comments dropped."""
    out = []
    for m in ACTION_RE.finditer(text):
        body = m.group(2).strip()
        if body.startswith("/*"):
            continue
        out.append(body)
    return out


def value_refs(text):
    refs = set()
    for body in actions(text):
        for m in VALUES_RE.finditer(body):
            refs.add(tuple(m.group(1).strip(".").split(".")))
    return refs


def missing_value_refs(text, values):
    missing = []
    for ref in sorted(value_refs(text)):
        node = values
        for i, key in enumerate(ref):
            if not isinstance(node, dict):
                break  # a list or scalar: deeper keys are indexes into user data
            if key not in node:
                missing.append(".Values." + ".".join(ref[: i + 1]))
                break
            node = node[key]
    return missing


def check_balance(text):
    """Returns a list of problems (empty when balanced)."""
    stack, problems = [], []
    for body in actions(text):
        word = body.split()[0] if body.split() else ""
        if word in OPENERS:
            stack.append(word)
        elif word == "else":
            if not stack or stack[-1] not in ("if", "with", "range"):
                problems.append("else outside if/with/range")
        elif word == "end":
            if not stack:
                problems.append("end without an opening action")
            else:
                stack.pop()
    if stack:
        problems.append("unclosed: " + ", ".join(stack))
    return problems


# ---- the renderer -----------------------------------------------------------------------

def _lex(text):
    """Text and action items with Go's {{- -}} whitespace trimming applied."""
    items, pos, trim_next = [], 0, False
    for m in ACTION_RE.finditer(text):
        chunk = text[pos:m.start()]
        if trim_next:
            chunk = chunk.lstrip(" \t\r\n")
        if m.group(1):
            chunk = chunk.rstrip(" \t\r\n")
        items.append(("text", chunk))
        body = m.group(2).strip()
        if not body.startswith("/*"):
            items.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    chunk = text[pos:]
    if trim_next:
        chunk = chunk.lstrip(" \t\r\n")
    items.append(("text", chunk))
    return items


def _parse(items, i=0, stop=("end",)):
    """Parses items from i to a stop word; returns (nodes, index of the stop, stop body)."""
    nodes = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split()[0]
        if word in stop:
            return nodes, i, body
        if word == "if":
            branches, cond = [], body[2:].strip()
            while True:
                inner, i, closer = _parse(items, i + 1, ("else", "end"))
                branches.append((cond, inner))
                if closer == "end":
                    break
                rest = closer[4:].strip()
                if rest.startswith("if "):
                    cond = rest[3:].strip()
                elif rest == "":
                    cond = "true"
                else:
                    raise RenderError("unsupported else: " + closer)
            nodes.append(("if", branches))
            i += 1
        elif word in ("with", "range"):
            expr = body[len(word):].strip()
            inner, i, closer = _parse(items, i + 1, ("else", "end"))
            other = []
            if closer != "end":
                if closer.strip() != "else":
                    raise RenderError("unsupported: " + closer)
                other, i, _ = _parse(items, i + 1, ("end",))
            nodes.append((word, expr, inner, other))
            i += 1
        elif word == "define":
            name = json.loads(body[6:].strip())
            inner, i, _ = _parse(items, i + 1, ("end",))
            nodes.append(("define", name, inner))
            i += 1
        elif word in ("else", "end", "block", "template"):
            raise RenderError("unexpected or unsupported action: " + body)
        else:
            nodes.append(("action", body))
            i += 1
    if stop != ("__eof__",):
        raise RenderError("missing {{ end }}")
    return nodes, i, None


def _tokens(expr):
    return TOKEN_RE.findall(expr)


def _group(tokens):
    """Nested lists for parentheses."""
    out, stack = [], []
    cur = out
    for t in tokens:
        if t == "(":
            stack.append(cur)
            cur.append([])
            cur = cur[-1]
        elif t == ")":
            cur = stack.pop()
        else:
            cur.append(t)
    if stack:
        raise RenderError("unbalanced parentheses")
    return out


def _truthy(v):
    """Go template truthiness: false, 0, nil and empty strings, lists and maps are false."""
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def gostr(v):
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (dict, list)):
        raise RenderError("printing a map or list directly: %r" % (v,))
    return str(v)


def _to_yaml(v):
    if v in ({}, [], None):
        return {dict: "{}", list: "[]"}.get(type(v), "null")
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n, s):
    return "\n".join((" " * n + line) if line else line for line in gostr(s).split("\n"))


def _printf(fmt, *args):
    args = list(args)
    def sub(m):
        if m.group(0) == "%%":
            return "%"
        if not args:
            raise RenderError("printf: too few arguments for " + fmt)
        return gostr(args.pop(0))
    out = re.sub(r"%%|%[svd]", sub, fmt)
    if args:
        raise RenderError("printf: too many arguments for " + fmt)
    return out


class Renderer:
    def __init__(self, templates, values, release="mx", namespace="model-express",
                 chart=None):
        self.defines = {}
        self.files = {}
        for name, text in templates.items():
            nodes, _, _ = _parse(_lex(text), 0, ("__eof__",))
            self.files[name] = nodes
        for nodes in self.files.values():
            self._collect_defines(nodes)
        chart = chart or {}
        self.root = {
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": {"Name": chart.get("name", ""), "Version": chart.get("version", ""),
                      "AppVersion": chart.get("appVersion", "")},
        }

    def _collect_defines(self, nodes):
        for node in nodes:
            if node[0] == "define":
                self.defines[node[1]] = node[2]

    def render(self, name):
        return self._render(self.files[name], self.root, {})

    def _render(self, nodes, dot, env):
        out = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "action":
                v = self._pipeline(node[1], dot, env)
                out.append(gostr(v))
            elif kind == "if":
                for cond, body in node[1]:
                    if cond == "true" or _truthy(self._pipeline(cond, dot, env)):
                        out.append(self._render(body, dot, env))
                        break
            elif kind == "with":
                v = self._pipeline(node[1], dot, env)
                out.append(self._render(node[2] if _truthy(v) else node[3],
                                        v if _truthy(v) else dot, env))
            elif kind == "range":
                out.append(self._range(node, dot, env))
            elif kind == "define":
                pass
        return "".join(out)

    def _range(self, node, dot, env):
        expr = node[1]
        keyvar = valvar = None
        if ":=" in expr:
            names, expr = expr.split(":=", 1)
            names = [n.strip() for n in names.split(",")]
            if len(names) == 2:
                keyvar, valvar = names
            else:
                valvar = names[0]
        coll = self._pipeline(expr.strip(), dot, env)
        if isinstance(coll, dict):
            pairs = [(k, coll[k]) for k in sorted(coll)]
        elif isinstance(coll, list):
            pairs = list(enumerate(coll))
        elif coll is None:
            pairs = []
        else:
            raise RenderError("range over %r" % (coll,))
        if not pairs:
            return self._render(node[3], dot, env)
        out = []
        for k, v in pairs:
            scope = dict(env)
            if keyvar:
                scope[keyvar] = k
            if valvar:
                scope[valvar] = v
            out.append(self._render(node[2], v, scope))
        return "".join(out)

    def _pipeline(self, expr, dot, env):
        if ":=" in expr:
            raise RenderError("variable assignment outside range: " + expr)
        return self._eval_grouped(_group(_tokens(expr)), dot, env)

    def _eval_grouped(self, tokens, dot, env):
        cmds, cur = [], []
        for t in tokens:
            if t == "|":
                cmds.append(cur)
                cur = []
            else:
                cur.append(t)
        cmds.append(cur)
        value, piped = None, False
        for cmd in cmds:
            value = self._command(cmd, dot, env, value, piped)
            piped = True
        return value

    def _command(self, cmd, dot, env, prev, piped):
        if not cmd:
            raise RenderError("empty command")
        head = cmd[0]
        if isinstance(head, str) and head in FUNCS:
            args = [self._arg(a, dot, env) for a in cmd[1:]]
            if piped:
                args.append(prev)
            if head == "include":
                name, ctx = args
                if name not in self.defines:
                    raise RenderError("include of undefined template " + name)
                return self._render(self.defines[name], ctx, {})
            return FUNCS[head](*args)
        if len(cmd) != 1 or piped:
            raise RenderError("unsupported command: %r" % (cmd,))
        return self._arg(head, dot, env)

    def _arg(self, tok, dot, env):
        if isinstance(tok, list):
            return self._eval_grouped(tok, dot, env)
        if tok.startswith('"'):
            return json.loads(tok)
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if tok in ("true", "false"):
            return tok == "true"
        if tok == "nil":
            return None
        if tok == ".":
            return dot
        if tok.startswith("."):
            return _field(dot, tok[1:].split("."))
        if tok.startswith("$"):
            name, _, rest = tok.partition(".")
            base = self.root if name == "$" else env[name] if name in env else _undef(name)
            return _field(base, rest.split(".")) if rest else base
        raise RenderError("unsupported token: " + tok)


def _undef(name):
    raise RenderError("undefined variable " + name)


def _field(v, path):
    for key in path:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise RenderError("field %s of a non-map" % key)
        v = v.get(key)
    return v


def _fail(msg):
    raise TemplateFail(msg)


def _and(*a):
    for v in a:
        if not _truthy(v):
            return v
    return a[-1]


def _or(*a):
    for v in a:
        if _truthy(v):
            return v
    return a[-1]


FUNCS = {
    "include": None,  # handled by the renderer
    "default": lambda d, v=None: v if _truthy(v) else d,
    "printf": _printf,
    "quote": lambda v: json.dumps(gostr(v)),
    "toYaml": _to_yaml,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "indent": _indent,
    "trunc": lambda n, s: s[:n],
    "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
    "replace": lambda old, new, s: s.replace(old, new),
    "and": _and,
    "or": _or,
    "not": lambda v: not _truthy(v),
    "eq": lambda a, b: a == b,
    "gt": lambda a, b: a > b,
    "int": lambda v: int(v or 0),
    "has": lambda item, coll: item in (coll or []),
    "hasKey": lambda d, k: k in (d or {}),
    "fail": _fail,
}
