"""The project's own docs: no citation of files users do not have, commands that parse,
and no words of the development process.

`DocsTest.test_documented_commands_parse` reads every command line of the docs
(`doc_files`) that runs an entry point: `python -m avjax.main | avjax.evaluate | avjax.predict ...` or
`python scripts/<name>.py ...` (also `.venv/bin/python`, `python3`, behind `VAR=value`,
`srun ...`, `/usr/bin/time -v`, in ``` blocks, indented blocks and inline `code`; lines
continued with a trailing backslash are joined; `# comments` and redirections are
dropped), and checks, without running anything:

* every `--flag` exists for that entry point: the absl flags its source defines (read
  with `ast`, so that no entry module is imported: absl's FLAGS is global), absl's own
  (`--verbosity`, `--v`, `--logtostderr`, ...) and the `--no<flag>` form of a boolean one;
  for argparse entry points (some scripts) the options of their parser,
  rebuilt from the `add_argument` calls (no abbreviations); for a script that defines none
  and imports a module of the checkout (scripts/benchmark.py: benchmarks/benchmark.py),
  that module's. Its value must parse (an
  integer for an integer flag, one of an enum's values, no value for a switch);
* `--config=FILE[:TOKENS]` loads (the config file's `get_config(TOKENS)`) and, with the
  command's `--config.<field>=<value>` overrides applied by ml_collections' own
  config_flags (each value parsed as the field's type), passes
  `config_lib.complete` and `config_lib.validate`. scripts/reproduce.py's
  `--config_args` and `--override` are checked the same way;
* `python -m avjax.main` takes no positional arguments.

`test_documented_config_mentions_parse` checks the same way inline code that only names a
config or fields (`configs/ravdess.py:audio_lstm`, `--config.model.trunk=frozen`).
`test_no_words_of_the_development_process` keeps words of how the project was made
(`FORBIDDEN`) out of the docs.

Placeholders: a value that is `...`, contains `...` or `<...>`, starts with `$`, or is an
upper-case word (`DIR`, `K`, `N`) is not parsed, but its flag's name is still checked;
`a|b` checks each alternative; `[--flag=v]` (optional in a usage line) counts as
`--flag=v`; a config token that is a placeholder (`configs/ravdess.py:<windowing>`) is
left out of the tokens; a config file that is one (`--config=...`, `configs/<x>.py`)
checks only that the overrides name existing fields (of configs/ravdess.py).

A command shown failing on purpose: put `<!-- docs-test: expect-error -->` on the line
before it (before the opening ``` for a whole block); the test then requires it to fail.
"""

from __future__ import annotations

import ast
import argparse
import dataclasses
import functools
import pathlib
import re

from absl import flags
from absl.testing import absltest

REPO = pathlib.Path(__file__).resolve().parents[1]

EXPECT_ERROR = "<!-- docs-test: expect-error -->"


def doc_files() -> list[pathlib.Path]:
  """README.md, BENCHMARKS.md, CHANGELOG.md (those present) and docs/*.md."""
  paths = [REPO / name for name in ("README.md", "BENCHMARKS.md", "CHANGELOG.md")]
  return [p for p in paths if p.is_file()] + sorted((REPO / "docs").glob("*.md"))


# --------------------------------------------------------------------------------------
# Markdown -> shell snippets -> commands (lists of words with their line numbers)

@dataclasses.dataclass(frozen=True)
class Word:
  text: str
  line: int


@dataclasses.dataclass
class Snippet:
  text: str
  line: int                # line number of text's first character
  newline_is_space: bool   # inline code: a line break inside is a space
  expect_error: bool = False


_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_NOT_SHELL = {"python", "py", "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg", "diff",
              "html", "xml", "markdown", "md", "csv"}
# A line outside code spans that starts like a command (indented code blocks, list items).
_COMMAND_START = re.compile(
    r"^(\$\s+)?(\S*/)?(python[\d.]*|[A-Za-z_][A-Za-z0-9_]*=\S*|srun|mpirun|time|env|nohup|uv"
    r"|\.?/?scripts/[\w.-]+\.py)(\s|$)")


def _code_spans(para: str, first_line: int) -> tuple[list[Snippet], str]:
  """The inline code spans of a paragraph (CommonMark: a run of n backticks up to the
  next run of exactly n), and the paragraph with the spans blanked out."""
  spans, rest = [], list(para)
  pos = 0
  while True:
    m = re.compile(r"`+").search(para, pos)
    if not m:
      break
    ticks = m.group(0)
    close = re.compile(r"(?<!`)" + ticks + r"(?!`)").search(para, m.end())
    if not close:
      pos = m.end()
      continue
    body = para[m.end():close.start()]
    line = first_line + para.count("\n", 0, m.end())
    spans.append(Snippet(body, line, newline_is_space=True))
    for i in range(m.start(), close.end()):
      if rest[i] != "\n":
        rest[i] = " "
    pos = close.end()
  return spans, "".join(rest)


def shell_snippets(text: str) -> list[Snippet]:
  """The pieces of a Markdown text that may hold shell commands."""
  lines = text.split("\n")
  # Lines a marker applies to: the next non-blank line, or the whole block it opens.
  expect: set[int] = set()
  for i, line in enumerate(lines):
    if EXPECT_ERROR in line:
      j = i + 1
      while j < len(lines) and not lines[j].strip():
        j += 1
      if j < len(lines):
        m = _FENCE.match(lines[j])
        k = j   # 0-based index of the last line the marker covers
        if m:
          k += 1
          while k < len(lines) and not lines[k].strip().startswith(m.group(1)):
            k += 1
        expect.update(range(j + 1, k + 2))  # 1-based line numbers j+1 .. k+1
  out: list[Snippet] = []
  para: list[tuple[int, str]] = []

  def flush_paragraph():
    if not para:
      return
    first = para[0][0]
    spans, rest = _code_spans("\n".join(l for _, l in para), first)
    out.extend(spans)
    rest_lines = rest.split("\n")
    k = 0
    while k < len(rest_lines):
      if _COMMAND_START.match(rest_lines[k].strip()):
        start = k
        while rest_lines[k].rstrip().endswith("\\") and k + 1 < len(rest_lines):
          k += 1
        out.append(Snippet("\n".join(rest_lines[start:k + 1]), first + start,
                           newline_is_space=False))
      k += 1
    para.clear()

  i = 0
  while i < len(lines):
    m = _FENCE.match(lines[i])
    if m:
      flush_paragraph()
      fence, lang = m.group(1), m.group(2).lower()
      j = i + 1
      while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                    and not lines[j].strip().strip(fence[0])):
        j += 1
      if lang not in _NOT_SHELL:
        out.append(Snippet("\n".join(lines[i + 1:j]), i + 2, newline_is_space=False))
      i = j + 1
      continue
    if lines[i].strip():
      para.append((i + 1, lines[i]))
    else:
      flush_paragraph()
    i += 1
  flush_paragraph()
  for s in out:
    s.expect_error = s.line in expect
  return out


def split_commands(snippet: Snippet) -> list[list[Word]]:
  """Shell words of each simple command in `snippet`: quotes removed, `\\`-newline
  joined, `# comments` and redirections (`> f`, `2>&1`) dropped; `;`, `&&`, `||`, `&`, a
  `|` that starts a word, and (outside inline code) a line break separate commands."""
  s, line = snippet.text, snippet.line
  commands: list[list[Word]] = []
  words: list[Word] = []
  cur: list[str] | None = None
  cur_line = line
  skip_next = False
  quote = None

  def start_word():
    nonlocal cur, cur_line
    if cur is None:
      cur, cur_line = [], line

  def end_word():
    nonlocal cur, skip_next
    if cur is not None:
      if skip_next:
        skip_next = False
      else:
        words.append(Word("".join(cur), cur_line))
      cur = None

  def end_command():
    nonlocal words
    end_word()
    if words:
      commands.append(words)
    words = []

  i, n = 0, len(s)
  while i < n:
    c = s[i]
    nxt = s[i + 1] if i + 1 < n else ""
    if quote == "'":
      if c == "'":
        quote = None
      else:
        cur.append(c)
    elif quote == '"':
      if c == '"':
        quote = None
      elif c == "\\" and nxt in '"\\$`\n':
        if nxt != "\n":
          cur.append(nxt)
        else:
          line += 1
        i += 2
        continue
      else:
        cur.append(c)
    elif c == "\\":
      if nxt == "\n":
        end_word()
        line += 1
      elif nxt:
        start_word()
        cur.append(nxt)
      i += 2
      continue
    elif c in " \t\r":
      end_word()
    elif c == "\n":
      if snippet.newline_is_space:
        end_word()
      else:
        end_command()
    elif c == "#" and cur is None:
      while i < n and s[i] != "\n":
        i += 1
      continue
    elif c in ";&" or (c == "|" and cur is None):
      end_command()
      if nxt == c:
        i += 1
    elif c == "<" and re.match(r"<[A-Za-z][^<>\n]*>", s[i:]):
      # A `<placeholder with words>` (not shell): one literal part of the word.
      m = re.match(r"<[A-Za-z][^<>\n]*>", s[i:])
      start_word()
      cur.extend(m.group(0))
      i += len(m.group(0))
      continue
    elif c in "<>" and (cur is None or "".join(cur).isdigit()):
      cur = None         # an fd number before the redirection
      end_word()
      skip_next = True   # the redirection's target
      while i + 1 < n and s[i + 1] in "<>&":
        i += 1
      if i + 1 < n and s[i + 1] in "0123456789-" and s[i] == "&":
        i += 1           # `>&1`, `>&-`: no target word
        skip_next = False
    elif c in "'\"":
      start_word()
      quote = c
    else:
      start_word()
      cur.append(c)
    if c == "\n":
      line += 1
    i += 1
  end_command()
  return commands


@dataclasses.dataclass
class Invocation:
  entry: str               # "avjax/main.py", "scripts/reproduce.py", ...
  args: list[Word]
  line: int
  text: str                # the command as written (for messages)
  expect_error: bool = False
  missing: str = ""        # an entry point that does not exist


_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
_SCRIPT = re.compile(r"(?:^|/)(scripts/[\w.-]+\.py)$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _entry_of_module(module: str) -> tuple[str, bool]:
  rel = module.replace(".", "/")
  for cand in (rel + ".py", rel + "/__main__.py"):
    if (REPO / cand).is_file():
      return cand, True
  return rel + ".py", False


def invocation(words: list[Word]) -> Invocation | None:
  """The entry point a command runs (avjax.* or scripts/*.py), or None."""
  text = " ".join(w.text for w in words)
  for idx, w in enumerate(words):
    if _PYTHON.match(w.text.rsplit("/", 1)[-1]):
      break
  else:
    # `scripts/x.py --flag ...` written without the interpreter.
    j = 0
    while j < len(words) and _ENV.match(words[j].text):
      j += 1
    if j < len(words) and _SCRIPT.search(words[j].text) and any(
        w.text.startswith("-") for w in words[j + 1:]):
      entry = _SCRIPT.search(words[j].text).group(1)
      return Invocation(entry, words[j + 1:], words[j].line, text,
                        missing="" if (REPO / entry).is_file() else "no such script")
    return None
  rest = words[idx + 1:]
  k = 0
  while k < len(rest):
    t = rest[k].text
    if t == "-m" or (t.startswith("-m") and len(t) > 2):
      if t == "-m":
        if k + 1 >= len(rest):
          return None
        module, k = rest[k + 1].text, k + 2
      else:
        module, k = t[2:], k + 1
      module = module.rstrip(":;,.)")
      if not re.fullmatch(r"avjax(\.\w+)*", module):
        return None
      entry, exists = _entry_of_module(module)
      return Invocation(entry, rest[k:], words[idx].line, text,
                        missing="" if exists else f"no module {module}")
    if t.startswith("-c"):
      return None
    if t in ("-X", "-W", "-Q"):
      k += 2
      continue
    if t.startswith("-"):
      k += 1
      continue
    m = _SCRIPT.search(t)
    if not m:
      return None
    entry = m.group(1)
    return Invocation(entry, rest[k + 1:], words[idx].line, text,
                      missing="" if (REPO / entry).is_file() else "no such script")
  return None


def invocations(text: str) -> list[Invocation]:
  out = []
  for snippet in shell_snippets(text):
    for words in split_commands(snippet):
      inv = invocation(words)
      if inv is not None:
        inv.expect_error = snippet.expect_error
        out.append(inv)
  return out


def config_mentions(text: str) -> list[Invocation]:
  """Inline code that names a config or config fields without a command around it
  (`configs/ravdess.py:audio_lstm`, `--config=configs/demo.py:lstm`,
  `--config.model.trunk=frozen`), checked as arguments of `python -m avjax.main`. A field
  written without a value (`--config.dataset.data_dir`) need only exist."""
  out = []
  for snippet in shell_snippets(text):
    if not snippet.newline_is_space:
      continue
    for words in split_commands(snippet):
      if invocation(words) is not None:
        continue
      ws = list(words)
      if ws and re.fullmatch(r"configs/\w+\.py(:.*)?", ws[0].text):
        ws[0] = Word("--config=" + ws[0].text, ws[0].line)
      if not ws or not all(re.match(r"--config=configs/|--(no)?config\.\w", w.text) for w in ws):
        continue
      ws = [Word(w.text + "=...", w.line) if w.text.startswith("--config.") and "=" not in w.text
            else w for w in ws]
      out.append(Invocation("avjax/main.py", ws, ws[0].line, " ".join(w.text for w in words),
                            expect_error=snippet.expect_error))
  return out


# --------------------------------------------------------------------------------------
# Entry points' flags, from their source

@dataclasses.dataclass
class FlagSpec:
  name: str
  kind: str                     # bool int float enum string list multi_string multi_int config
  choices: tuple | None = None
  short: str | None = None


@dataclasses.dataclass
class EntrySpec:
  style: str                                    # "absl", "argparse" or "none"
  flags: dict[str, FlagSpec]
  parser: argparse.ArgumentParser | None = None


_ABSL_KINDS = {
    "DEFINE_bool": "bool", "DEFINE_boolean": "bool", "DEFINE_integer": "int",
    "DEFINE_float": "float", "DEFINE_enum": "enum", "DEFINE_string": "string",
    "DEFINE_list": "list", "DEFINE_spaceseplist": "list", "DEFINE_multi_string": "multi_string",
    "DEFINE_multi_integer": "multi_int", "DEFINE_multi_float": "multi_float",
    "DEFINE_multi_enum": "multi_string", "DEFINE_enum_class": "string",
    "DEFINE_config_file": "config", "DEFINE_config_dict": "config",
    "DEFINE_config_dataclass": "config",
}


def _literal(node):
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
    return None


def _call_arg(call: ast.Call, index: int, keyword: str):
  for kw in call.keywords:
    if kw.arg == keyword:
      return kw.value
  return call.args[index] if len(call.args) > index else None


class _RaisingParser(argparse.ArgumentParser):

  def error(self, message):
    raise ValueError(message)


def _option_strings(node, loop_values: dict[str, list]) -> list[str]:
  """A string constant, or an f-string over one loop variable with literal values."""
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    return [node.value]
  if isinstance(node, ast.JoinedStr):
    names = {n.id for v in node.values if isinstance(v, ast.FormattedValue)
             for n in ast.walk(v.value) if isinstance(n, ast.Name)}
    if len(names) == 1 and next(iter(names)) in loop_values:
      name = next(iter(names))
      out = []
      for value in loop_values[name]:
        parts = []
        for v in node.values:
          parts.append(v.value if isinstance(v, ast.Constant) else str(value))
        out.append("".join(parts))
      return out
  return []


@functools.lru_cache(maxsize=None)
def entry_spec(entry: str) -> EntrySpec:
  """The flags `entry` (a path under REPO) defines: absl DEFINE_* calls, or argparse
  add_argument calls rebuilt into a parser. Read with `ast`, nothing imported."""
  tree = ast.parse((REPO / entry).read_text())
  absl_flags: dict[str, FlagSpec] = {}
  add_arguments: list[tuple[ast.Call, dict[str, list]]] = []

  def visit(node, loops):
    if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
      values = _literal(node.iter)
      if isinstance(values, (list, tuple)):
        loops = {**loops, node.target.id: list(values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      attr = node.func.attr
      if attr in _ABSL_KINDS:
        name = _literal(_call_arg(node, 0, "name"))
        if isinstance(name, str):
          kind = _ABSL_KINDS[attr]
          choices = None
          if kind == "enum":
            choices = _literal(_call_arg(node, 2, "enum_values"))
            choices = tuple(choices) if isinstance(choices, (list, tuple)) else None
          short = _literal(next((k.value for k in node.keywords if k.arg == "short_name"), None))
          absl_flags[name] = FlagSpec(name, kind, choices, short)
      elif attr == "define_workdir":   # avjax.cli's --workdir (a DEFINE_string)
        absl_flags["workdir"] = FlagSpec("workdir", "string", None, None)
      elif attr == "add_argument":
        add_arguments.append((node, loops))
    for child in ast.iter_child_nodes(node):
      visit(child, loops)

  visit(tree, {})
  if not absl_flags and not add_arguments:
    # A thin entry point: the flags of the checkout's module it runs.
    for node in tree.body:
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for alias in node.names:
          target = pathlib.Path(*node.module.split("."), alias.name + ".py")
          if (REPO / target).is_file():
            return entry_spec(target.as_posix())
  if absl_flags:
    return EntrySpec("absl", absl_flags)
  if not add_arguments:
    return EntrySpec("none", {})
  parser = _RaisingParser(prog=entry, add_help=True, allow_abbrev=False)
  specs: dict[str, FlagSpec] = {}
  for call, loops in add_arguments:
    names = [s for a in call.args for s in _option_strings(a, loops)]
    if not names:
      continue
    kw = {}
    for k in call.keywords:
      value = _literal(k.value)
      if k.arg in ("action", "nargs", "choices", "const") and value is not None:
        kw[k.arg] = value
      elif k.arg == "type" and isinstance(k.value, ast.Name) and k.value.id in ("int", "float"):
        kw["type"] = {"int": int, "float": float}[k.value.id]
    if not names[0].startswith("-"):
      kw["nargs"] = "*"       # positionals: any number (the docs show parts of commands)
      kw.pop("action", None)
    try:
      parser.add_argument(*names, **kw)
    except (argparse.ArgumentError, ValueError, TypeError):
      parser.add_argument(*names, nargs="?" if names[0].startswith("-") else "*")
    for name in names:
      if name.startswith("-"):
        specs[name.lstrip("-")] = FlagSpec(name.lstrip("-"), "argparse")
  return EntrySpec("argparse", specs, parser)


@functools.lru_cache(maxsize=None)
def _absl_builtins() -> dict[str, FlagSpec]:
  """absl's own flags (app.run defines them in every absl program)."""
  from absl import app  # noqa: F401  (defines --run_with_pdb, --only_check_args, ...)
  from absl import logging  # noqa: F401  (defines --verbosity / -v, --logtostderr, ...)
  out = {}
  for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
    if module.startswith("absl."):
      for f in module_flags:
        out[f.name] = FlagSpec(f.name, "bool" if f.boolean else "string", short=f.short_name)
  for name in ("help", "helpshort", "helpfull", "helpxml"):
    out[name] = FlagSpec(name, "bool", short="?" if name == "help" else None)
  for name in ("flagfile", "undefok"):
    out[name] = FlagSpec(name, "string")
  return out


def _absl_values(spec: FlagSpec) -> flags.FlagValues:
  """A fresh FlagValues holding one flag like `spec` (nothing global is touched)."""
  fv = flags.FlagValues()
  kw = dict(flag_values=fv, short_name=spec.short)
  if spec.kind == "bool":
    flags.DEFINE_bool(spec.name, None, "", **kw)
  elif spec.kind == "int":
    flags.DEFINE_integer(spec.name, None, "", **kw)
  elif spec.kind == "float":
    flags.DEFINE_float(spec.name, None, "", **kw)
  elif spec.kind == "enum" and spec.choices:
    flags.DEFINE_enum(spec.name, None, list(spec.choices), "", **kw)
  elif spec.kind == "list":
    flags.DEFINE_list(spec.name, None, "", **kw)
  elif spec.kind == "multi_int":
    flags.DEFINE_multi_integer(spec.name, None, "", **kw)
  elif spec.kind == "multi_float":
    flags.DEFINE_multi_float(spec.name, None, "", **kw)
  elif spec.kind == "multi_string":
    flags.DEFINE_multi_string(spec.name, None, "", **kw)
  else:
    flags.DEFINE_string(spec.name, None, "", **kw)
  return fv


def _error_text(e: BaseException) -> str:
  from avjax import cli
  return cli._root_message(e)


# --------------------------------------------------------------------------------------
# Checking one invocation

_DEFAULT_CONFIG = "configs/ravdess.py"
_NO_POSITIONALS = ("avjax/main.py",)   # main() raises 'Unexpected arguments'


def is_placeholder(value: str) -> bool:
  v = value.strip()
  if "[" in v:   # `FILE[:TOKENS]`: an optional part in a usage line
    bare = re.sub(r"\[[^\[\]]*\]", "", v)
    if bare != v and bare and is_placeholder(bare):
      return True
  return ("..." in v or "…" in v or bool(re.search(r"<[^<>]*>", v)) or v.startswith("$")
          or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", v)))


def _strip_brackets(words: list[Word]) -> list[Word]:
  """`[--folds=0,3]` (optional, in a usage line) -> `--folds=0,3`; `...` dropped."""
  out = []
  for w in words:
    t = w.text
    if t.startswith("[") and (len(t) == 1 or t[1] == "-" or t.endswith("]")):
      t = t[1:]
      if t.endswith("]") and t.count("]") > t.count("["):
        t = t[:-1]
    elif t.endswith("]") and t.count("]") > t.count("["):
      t = t[:-1]
    if t and t not in ("...", "…"):
      out.append(Word(t, w.line))
  return out


@dataclasses.dataclass
class Arg:
  word: Word              # where it is written (the flag's word)
  name: str               # without dashes
  value: str | None       # None: written without a value


def _known(name: str, table: dict[str, FlagSpec]) -> FlagSpec | None:
  if name in table:
    return table[name]
  for spec in table.values():
    if spec.short and spec.short == name:
      return spec
  return None


def _config_problem(config_value: str | None, overrides: list[Arg], flag_name: str,
                    config_word: Word) -> list[tuple[Word, str]]:
  """Loads `config_value` (FILE[:TOKENS]) with ml_collections' config_flags, applies the
  `--<flag_name>.<field>=<value>` overrides, completes and validates the result."""
  from avjax import config_lib
  problems = []
  checked = True
  if config_value is None or is_placeholder(config_value):
    checked = False
    path, arg = _DEFAULT_CONFIG, None
  else:
    path, _, arg = config_value.partition(":")
    arg = arg if ":" in config_value else None
    if is_placeholder(path) or "*" in path:
      checked = False
      path, arg = _DEFAULT_CONFIG, None
  if not (REPO / path).is_file() and not pathlib.Path(path).is_file():
    return [(config_word, f"no config file {path}")]
  full = str(REPO / path) if (REPO / path).is_file() else path
  if arg is not None:
    tokens = [t for t in arg.split(",") if not is_placeholder(t)]
    full += ":" + ",".join(tokens)

  usable = []
  for o in overrides:
    field = o.name.split(".", 1)[1]
    if o.value is not None and is_placeholder(o.value):
      # Only the field's existence.
      try:
        cfg = _load_config(full, flag_name, [])
        for part in field.split("."):
          cfg = cfg[part]
      except Exception:  # noqa: BLE001
        problems.append((o.word, f"unknown config field '{field}'"))
    else:
      usable.append(o)

  def attempt(chosen: list[Arg]):
    return _load_config(full, flag_name,
                        [o.word.text if o.value is None else f"--{o.name}={o.value}"
                         for o in chosen])

  try:
    attempt([])
  except Exception as e:  # noqa: BLE001
    return problems + [(config_word, f"--{flag_name}={config_value}: {_error_text(e)}")]
  bad = False
  for o in usable:
    try:
      attempt([o])
    except Exception as e:  # noqa: BLE001
      problems.append((o.word, _error_text(e)))
      bad = True
  if bad or not checked:
    return problems
  try:
    config = attempt(usable)
    config_lib.validate(config_lib.complete(config))
  except Exception as e:  # noqa: BLE001
    problems.append((config_word, _error_text(e)))
  return problems


def _load_config(full: str, flag_name: str, override_args: list[str]):
  from ml_collections import config_flags
  argv = ["docs", f"--{flag_name}={full}"] + override_args
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(flag_name, None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  config = fv[flag_name].value
  config.keys()   # a config file that failed to load raises here
  return config


def _reproduce_config(args: list[Arg]) -> tuple[str | None, list[Arg]] | None:
  """scripts/reproduce.py: the config its runs get from --dataset, --config_args and
  --override (each run adds its row's tokens; --trunk depends on the rows: not checked)."""
  values = {a.name: a for a in args if a.value is not None and not is_placeholder(a.value)}
  if not any(n in values for n in ("config_args", "override")):
    return None
  dataset = values["dataset"].value if "dataset" in values else "ravdess"
  if dataset not in ("ravdess", "crema_d"):
    return None
  tokens = []
  for a in args:
    if a.name == "config_args" and a.value is not None:
      tokens += [t for t in a.value.split(",") if t]
  overrides = []
  for a in args:
    if a.name == "override" and a.value is not None and "=" in a.value:
      field, value = a.value.removeprefix("--").removeprefix("config.").split("=", 1)
      overrides.append(Arg(a.word, "config." + field, value))
  return f"configs/{dataset}.py:" + ",".join(tokens), overrides


def check_invocation(inv: Invocation) -> list[tuple[Word, str]]:
  """[(word, problem)] for one command."""
  head = Word(inv.entry, inv.line)
  if inv.missing:
    return [(head, inv.missing)]
  spec = entry_spec(inv.entry)
  if spec.style == "none":
    return []
  table = dict(spec.flags)
  if spec.style == "absl":
    table = {**_absl_builtins(), **table}
  config_names = [f.name for f in spec.flags.values() if f.kind == "config"]

  # Words -> flags (with values) and positionals.
  words = _strip_brackets(inv.args)
  args: list[Arg] = []
  positionals: list[Word] = []
  problems: list[tuple[Word, str]] = []
  i = 0
  while i < len(words):
    w = words[i]
    t = w.text
    i += 1
    if t == "--":
      positionals += words[i:]
      break
    if not t.startswith("-") or t == "-" or re.fullmatch(r"-\d[\d.e]*", t):
      positionals.append(w)
      continue
    name, eq, value = t.lstrip("-").partition("=")
    value = value if eq else None
    if spec.style == "argparse":
      opt = spec.parser._option_string_actions.get(t.split("=", 1)[0])
      takes_value = opt is not None and opt.nargs != 0
    else:
      known = _known(name, table)
      takes_value = known is not None and known.kind != "bool"
      if any(name.startswith(c + ".") or name.startswith("no" + c + ".") for c in config_names):
        takes_value = not name.startswith("no")
    if value is None and takes_value and i < len(words) and not words[i].text.startswith("-"):
      value = words[i].text
      i += 1
    args.append(Arg(w, name, value))

  # Names, then values.
  config_args: dict[str, Arg] = {}
  overrides: dict[str, list[Arg]] = {c: [] for c in config_names}
  for a in args:
    cfg = next((c for c in config_names
                if a.name.startswith(c + ".") or a.name.startswith("no" + c + ".")), None)
    if cfg is not None:
      if a.name.startswith("no"):
        a = Arg(a.word, a.name[2:], "false")
      overrides[cfg].append(a)
      continue
    if a.name in config_names:
      config_args[a.name] = a
      continue
    if spec.style == "argparse":
      opt = "-" * (2 if a.word.text.startswith("--") else 1) + a.name
      if opt not in spec.parser._option_string_actions:
        problems.append((a.word, f"unknown option {opt} of {inv.entry}"))
        continue
      if isinstance(spec.parser._option_string_actions[opt], argparse._HelpAction):
        continue
      for alt in ([None] if a.value is None else a.value.split("|")):
        if alt is not None and is_placeholder(alt):
          continue
        try:
          spec.parser.parse_args([opt] if alt is None else [f"{opt}={alt}"])
        except (ValueError, SystemExit) as e:
          problems.append((a.word, f"{a.word.text}: {e}"))
      continue
    known = _known(a.name, table)
    negated = None
    if known is None and a.name.startswith("no"):
      negated = _known(a.name[2:], table)
    if known is None and not (negated is not None and negated.kind == "bool"):
      problems.append((a.word, f"unknown flag --{a.name} of {inv.entry}"))
      continue
    flag = known or negated
    for alt in ([None] if a.value is None else a.value.split("|")):
      if alt is not None and is_placeholder(alt):
        continue
      argv = ["docs", f"--{a.name}" if alt is None else f"--{a.name}={alt}"]
      try:
        _absl_values(flag)(argv)
      except Exception as e:  # noqa: BLE001
        problems.append((a.word, _error_text(e)))

  for c in config_names:
    if c not in config_args and not overrides[c]:
      continue
    a = config_args.get(c)
    value = a.value if a is not None else None
    problems += _config_problem(value, overrides[c], c, a.word if a else overrides[c][0].word)

  if inv.entry == "scripts/reproduce.py":
    derived = _reproduce_config(args)
    if derived is not None:
      problems += _config_problem(derived[0], derived[1], "config",
                                  next(a.word for a in args if a.name in ("config_args", "override")))

  if inv.entry in _NO_POSITIONALS:
    for w in positionals:
      if not is_placeholder(w.text):
        problems.append((w, f"{inv.entry} takes no positional arguments"))
  return problems


def check_doc_text(text: str, name: str, mentions: bool = False) -> list[str]:
  """`name:line: problem` for each bad documented command of a Markdown text (with
  `mentions`: for each bad config mention instead, `config_mentions`)."""
  out = []
  for inv in (config_mentions(text) if mentions else invocations(text)):
    problems = check_invocation(inv)
    shown = inv.text if len(inv.text) <= 100 else inv.text[:97] + "..."
    if inv.expect_error:
      if not problems:
        out.append(f"{name}:{inv.line}: marked expect-error but parses: `{shown}`")
      continue
    for word, message in problems:
      out.append(f"{name}:{word.line}: {word.text!r}: {message}  (in `{shown}`)")
  return out


# --------------------------------------------------------------------------------------
# Words of the development process

FORBIDDEN = (
    (r"\bsession", "session"),
    (r"\bissue", "issue"),
    (r"\bacceptance\b", "acceptance"),
    (r"\bthe\s+tools?\b", "the tool"),
    (r"\bthis\s+machine['’]s\s+day\b", "this machine's day"),
    (r"\.\./shared", "../shared"),
)


def forbidden_words(text: str, name: str) -> list[str]:
  out = []
  for pattern, label in FORBIDDEN:
    for m in re.finditer(pattern, text, re.IGNORECASE):
      line = text.count("\n", 0, m.start()) + 1
      out.append(f"{name}:{line}: {label!r}: "
                 f"{text.splitlines()[line - 1].strip()[:100]}")
  return sorted(out, key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


# --------------------------------------------------------------------------------------

_FAKE_DOC = """\
# A doc

Train:

```
python -m avjax.main --config=configs/ravdess.py:audio_lsmt --workdir=runs/x   # bad token
.venv/bin/python -m avjax.main --config=configs/ravdess.py \\
    --config.train.num_epoch=3 --workdir=runs/x
```

Then `python -m avjax.evaluate --workdir=DIR
--fold=3` and `CI=true python3 scripts/reproduce.py --dataset=ravdess --table=3
--config_args=audio_lstm,runlocl --workdir=w`.

    python -m avjax.predict --workdir=runs/x --jsn clip.mp4
    srun -n 2 python -m avjax.main --config=configs/crema_d.py:w8_l1_ov --workdir=w --config_mismatch=maybe
    python scripts/no_such_script.py --x=1; python -m avjax.main --config=configs/demo.py --workdir=w extra
"""

_GOOD_DOC = """\
```
python -m avjax.main --config=configs/ravdess.py:audio_lstm,w4_l1_ov --workdir=runs/a  # --bogus
python -m avjax.main --config=configs/ravdess.py:<windowing> --workdir=DIR --verbosity=1 --v=1
python -m avjax.main --config=configs/demo.py --workdir=w --config.folds="(0,)" \\
    --config.input.cache_on_device=True --noconfig.model.pretrained --config.train.num_epochs 3
python -m avjax.main --config=... --workdir=DIR --config.model.trunk=frozen --config.seed=N
python -m pip install --bogus foo && python -c 'import x' --bogus
```

- `python -m avjax.evaluate --workdir=DIR [--folds=0,3] [--checkpoint=latest|best]`
- `python scripts/reproduce.py --dataset=crema_d --table=2 --workdir=w --nodry_run
  --override=train.num_epochs=5 --config_args=runlocal` and `scripts/reproduce.py --trunk=frozen`
- `python -m avjax.predict --workdir=runs/ravdess --json *.flv > out.jsonl 2>&1`
- `.venv/bin/python scripts/benchmark.py --preset=gpu --models_batch=4 --worker "$(x)" --repeats 5`
  and `python scripts/benchmark.py --help`, `python -m avjax.evaluate --helpshort`

<!-- docs-test: expect-error -->
```
python -m avjax.main --config=configs/ravdess.py:nonsense --workdir=w
```
"""


def field_table_defaults(text: str) -> list[tuple[str, object]]:
  """The README's `| field | default | meaning |` rows whose default is a Python literal,
  as (field, value) pairs; `a` / `b` cells pair up, one default for several fields applies
  to each. Rows with a default that is not a literal (`(0, …, 9)`) are left out."""
  pairs = []
  for m in re.finditer(r"^\| (`[a-z_.]+`(?: / `[a-z_.]+`)*) \| ([^|]+) \|", text, re.M):
    names = [n.strip("` ") for n in m.group(1).split(" / ")]
    cells = [c.strip().strip("`") for c in m.group(2).split(" / ")]
    try:
      values = [ast.literal_eval(c) for c in cells]
    except (ValueError, SyntaxError):
      continue
    if len(values) == 1:
      values *= len(names)
    if len(values) == len(names):
      pairs += zip(names, values)
  return pairs


class DocsTest(absltest.TestCase):

  def test_design_decisions_are_in_the_project(self):
    # The design notes users need live in docs/design.md; nothing points outside the
    # repository (../shared is not shipped).
    self.assertTrue((REPO / "docs" / "design.md").is_file())
    self.assertIn("docs/design.md", (REPO / "README.md").read_text())
    offenders = []
    for path in sorted(REPO.rglob("*")):
      if (path.suffix not in (".py", ".md") or ".venv" in path.parts or "runs" in path.parts
          or path.name == "test_docs.py"):
        continue
      text = path.read_text(errors="replace")
      if "DESIGN.md" in text or "../shared/DESIGN" in text:
        offenders.append(str(path.relative_to(REPO)))
    self.assertEqual(offenders, [])

  def test_documented_commands_parse(self):
    problems, count = [], 0
    for path in doc_files():
      text = path.read_text()
      count += len(invocations(text))
      problems += check_doc_text(text, str(path.relative_to(REPO)))
    self.assertGreater(count, 0)
    self.assertEqual(problems, [], "documented commands that would not parse:\n"
                     + "\n".join(problems))

  def test_documented_config_mentions_parse(self):
    problems = []
    for path in doc_files():
      problems += check_doc_text(path.read_text(), str(path.relative_to(REPO)), mentions=True)
    self.assertEqual(problems, [], "config tokens or fields in the docs that do not parse:\n"
                     + "\n".join(problems))

  def test_config_mentions_are_checked(self):
    text = ("Tokens `configs/ravdess.py:audio_lstm,paper_literal`, `configs/demo.py:lstmm`;\n"
            "fields `--config.model.trunk=frozen`, `--config.dataset.data_dir`,\n"
            "`--config.input.cached_views=K`, `--config.train.num_epoch=3`, `--config.seed=x`,\n"
            "`--config=configs/crema_d.py:w8_l1_ov`, not `--workdir=x` nor `config.seed`.\n")
    self.assertLen(config_mentions(text), 8)
    problems = check_doc_text(text, "M.md", mentions=True)
    self.assertLen(problems, 4, "\n".join(problems))
    for line, what in ((1, "lstmm"), (3, "num_epoch"), (3, "--config.seed=x"),
                       (4, "w8_l1_ov")):
      self.assertTrue(any(p.startswith(f"M.md:{line}:") and what in p for p in problems),
                      f"{line} {what}:\n" + "\n".join(problems))

  def test_command_check_reports_bad_flags_tokens_and_fields(self):
    problems = check_doc_text(_FAKE_DOC, "FAKE.md")
    text = "\n".join(problems)
    expected = [
        ("FAKE.md:6:", "audio_lsmt"),                  # unknown config token
        ("FAKE.md:8:", "train.num_epoch"),             # unknown field (continued line)
        ("FAKE.md:12:", "--fold"),                     # evaluate has --folds
        ("FAKE.md:12:", "--table=3"),                  # enum value
        ("FAKE.md:13:", "runlocl"),                    # reproduce's --config_args
        ("FAKE.md:15:", "--jsn"),                      # argparse option
        ("FAKE.md:16:", "crema_d_av has no builder config 'w8_l1_ov'"),
        ("FAKE.md:16:", "--config_mismatch=maybe"),
        ("FAKE.md:17:", "scripts/no_such_script.py"),
        ("FAKE.md:17:", "'extra'"),
    ]
    for where, what in expected:
      self.assertTrue(any(p.startswith(where) and what in p for p in problems),
                      f"{where} {what} not reported:\n{text}")
    self.assertLen(problems, len(expected), text)

  def test_command_check_accepts_good_commands(self):
    invs = invocations(_GOOD_DOC)
    self.assertEqual([i.entry for i in invs],
                     ["avjax/main.py"] * 4 + ["avjax/evaluate.py", "scripts/reproduce.py",
                                              "scripts/reproduce.py", "avjax/predict.py",
                                              "scripts/benchmark.py", "scripts/benchmark.py",
                                              "avjax/evaluate.py", "avjax/main.py"])
    self.assertEqual(check_doc_text(_GOOD_DOC, "GOOD.md"), [])
    # The expect-error marker: the marked command must fail.
    passing = _GOOD_DOC.replace(":nonsense", ":runlocal")
    self.assertLen(check_doc_text(passing, "GOOD.md"), 1)

  def test_flag_discovery_matches_the_entry_points(self):
    from avjax import predict
    self.assertEqual(set(entry_spec("avjax/predict.py").flags), set(predict.flag_values()))
    self.assertEqual(set(entry_spec("avjax/main.py").flags),
                     {"config", "workdir", "config_mismatch", "take_over_locks"})
    self.assertEqual(set(entry_spec("avjax/evaluate.py").flags),
                     {"workdir", "folds", "checkpoint"})
    self.assertIn("models_samples", entry_spec("scripts/benchmark.py").flags)

  def test_readme_field_defaults_are_the_configs(self):
    pairs = field_table_defaults((REPO / "README.md").read_text())
    self.assertIn(("input.audio_noise_std", 0.0005), pairs)   # the table was read
    from avjax import config_lib
    # What a run sees: `complete` resolves the fields left to the trunk (trunk_lr_scale).
    config = config_lib.complete(_load_config(str(REPO / "configs/ravdess.py"), "config", []))
    for field, documented in pairs:
      value = config
      for part in field.split("."):
        value = value[part]
      self.assertEqual(value, documented, f"README's field table: {field}")

  def test_no_words_of_the_development_process(self):
    offenders = []
    for path in doc_files():
      offenders += forbidden_words(path.read_text(), str(path.relative_to(REPO)))
    self.assertEqual(offenders, [], "\n".join(offenders))

  def test_forbidden_words_are_found(self):
    text = "ok\nthe Session ended\nissues\nThe\ntool, ../shared/x, this machine's day\ntissue\n"
    found = forbidden_words(text, "X.md")
    self.assertEqual([f.split(":")[1] for f in found], ["2", "3", "4", "5", "5"])


if __name__ == "__main__":
  absltest.main()
