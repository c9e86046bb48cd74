"""The README and docs/ tell the truth about the code: every link lands, every command runs.

- README.md stays a front page (at most 200 lines) and links every docs/*.md page; each page links
  back to it; every relative link points to an existing file, and every anchor to a heading of its
  target (GitHub's slug rules).
- Every `pate ...` command in a fenced block or an inline code span names a real subcommand (nested
  groups such as `pate data prepare` included) and only options of that subcommand; every
  `python benchmarks/X.py` / `bash scripts/X.sh` command names an existing file and only options that
  file defines; every pipeline, script, benchmark, test or package path named exists; every
  `[section] key` of the pipeline configs is a real key; every `pate.x.y(...)` call resolves; every
  `PATE_*` variable is read somewhere; every shipped pipeline is mentioned.
- The README's quick start is exactly the two scripts that exist, and `.ci/run` runs its test command.

Reads text and imports `pate.cli` (no torch): well under 5 s.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import shlex
import typing
import unicodedata
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
QUICK_START = ["bash scripts/quickstart.sh", "bash scripts/test.sh"]


# ---------------------------------------------------------------------------------------------
# Reading markdown


def split_fences(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """The prose (fenced lines blanked, so line numbers hold) and the fenced blocks (lang, lines)."""
    prose, blocks, fence, lang, body = [], [], None, "", []
    for line in text.splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence is None and m:
            fence, lang, body = m.group(1), m.group(2).lower(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence):
            blocks.append((lang, body))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    assert fence is None, "an unclosed code fence"
    return "\n".join(prose), blocks


def code_spans(prose: str) -> list[str]:
    """Inline code spans, whitespace (line breaks inside a span) folded to one space."""
    return [" ".join(m.group(2).split()) for m in re.finditer(r"(`+)(.+?)\1", prose, re.S)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links reduced to their text, lowercase, punctuation and symbols
    dropped (letters, digits, marks, '-', '_' kept), each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(c for c in text if c.isalnum() or c in "-_ " or unicodedata.category(c).startswith("M"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    return re.findall(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)


def command_lines(path: Path) -> list[str]:
    """Every line of a shell-like fenced block, and every inline code span."""
    prose, blocks = split_fences(path.read_text(encoding="utf-8"))
    lines = [ln.strip() for lang, body in blocks if lang in ("", "sh", "bash", "shell", "console") for ln in body]
    return [ln for ln in lines if ln] + code_spans(prose)


# ---------------------------------------------------------------------------------------------
# Checking commands


def _words(line: str) -> list[str]:
    try:
        words = shlex.split(line, comments=False)
    except ValueError:
        words = line.split()
    return [w.strip("[](),;.") if w.startswith(("[", "(")) or w.endswith(("]", ")", ",", ";")) else w for w in words]


def _options(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if re.match(r"^--?[A-Za-z][\w-]*", w)]


def check_pate_command(line: str) -> list[str]:
    """Problems with a `pate ...` command line (options in its comment count: they are its options)."""
    from pate.cli import main

    words = _words(line)
    i = words.index("pate")
    cmd: click.Command = main
    path = ["pate"]
    for word in words[i + 1:]:
        if not isinstance(cmd, click.Group) or word not in cmd.commands:
            break
        cmd = cmd.commands[word]
        path.append(word)
    rest = words[i + len(path):]
    if cmd is main and rest and not rest[0].startswith("-"):
        return [f"{line!r}: no such pate command {rest[0] if rest else ''!r}"]
    if isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        return [f"{line!r}: no such command {' '.join(path)} {rest[0]}"]
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return [f"{line!r}: {' '.join(path)} has no option {o}" for o in _options(rest) if o not in known]


def check_file_command(line: str) -> list[str]:
    """Problems with `python benchmarks/X.py ...` / `bash scripts/X.sh ...`: the file exists and
    defines every option used (as a string literal of a .py, as text of a shell script)."""
    words = _words(line)
    at = [k for k, w in enumerate(words) if re.match(r"^(benchmarks|scripts)/[\w.-]+\.(py|sh)$", w)]
    if not at:
        return []
    file = ROOT / words[at[0]]
    if not file.is_file():
        return [f"{line!r}: {words[at[0]]} does not exist"]
    source = file.read_text(encoding="utf-8")
    opts = _options(words[at[0] + 1:])
    if file.suffix == ".py":
        missing = [o for o in opts if f'"{o}"' not in source and f"'{o}'" not in source]
    else:
        missing = [o for o in opts if o not in source]
    return [f"{line!r}: {words[at[0]]} has no option {o}" for o in missing]


def check_line(line: str) -> list[str]:
    code = line.split(" #", 1)[0] if not line.startswith("#") else ""
    problems = []
    if re.match(r"^(exec\s+)?(\S*/)?pate(\s|$)", code):
        problems += check_pate_command(re.sub(r"^(exec\s+)?\S*/pate\b", "pate", line))
    problems += check_file_command(code)
    return problems


PATH_RE = re.compile(
    r"(?<![\w/.~$-])((?:pipelines/[\w.-]+\.toml)|(?:scripts/[\w.-]+\.(?:sh|py))|(?:benchmarks/[\w.-]+\.py)"
    r"|(?:tests/[\w/.-]+\.py)|(?:pate/[\w/]+\.py)|(?:pate/[\w/]+/)(?=[`\s),]))")


# ---------------------------------------------------------------------------------------------
# (1) The front page and the links


def test_readme_is_a_front_page_that_links_every_docs_page():
    assert DOCS, "docs/ has no pages"
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    targets = {(README.parent / t.split("#")[0]).resolve() for t in links(README) if not t.startswith("#")}
    missing = [d.name for d in DOCS if d.resolve() not in targets]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_each_docs_page_says_what_it_covers_and_links_back(page):
    title, _, rest = page.read_text(encoding="utf-8").partition("\n")
    assert title.startswith("# "), f"{page.name} does not open with a title"
    opening = rest.strip().split("\n\n", 1)[0]  # the paragraph under the title
    assert not opening.startswith(("#", "```", "|", "-")), f"{page.name}: no opening line under the title"
    assert "](../README.md)" in opening, f"{page.name}: the opening paragraph does not link back to the README"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_lands(page):
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not problems, f"{page.name}: " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# (2) Commands, paths, config keys, calls and variables


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_is_a_real_command_with_real_options(page):
    problems = [p for line in command_lines(page) for p in check_line(line)]
    assert not problems, "\n".join(problems)


def test_the_scripts_pate_commands_are_real():
    lines = [ln.strip() for s in sorted((ROOT / "scripts").glob("*.sh")) for ln in s.read_text().splitlines()]
    problems = [p for ln in lines if re.search(r"(^|/)pate\s", ln) for p in check_line(ln)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_named_exists(page):
    text = page.read_text(encoding="utf-8")
    missing = sorted({p for p in PATH_RE.findall(text) if not (ROOT / p).exists()})
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_every_shipped_pipeline_is_documented():
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    missing = [p.name for p in sorted((ROOT / "pipelines").glob("*.toml"))
               if f"`{p.stem}`" not in text and f"pipelines/{p.name}" not in text]
    assert not missing, f"pipelines no page mentions: {missing}"


def _config_keys() -> dict[str, set[str]]:
    from pate import config

    hints = typing.get_type_hints(config.PipelineConfig)
    return {s: {f.name for f in dataclasses.fields(hints[s])} for s in config.SECTIONS}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_config_key_named_is_real(page):
    keys = _config_keys()
    every = set().union(*keys.values()) | {"name"}
    prose, blocks = split_fences(page.read_text(encoding="utf-8"))
    problems = []
    for span in code_spans(prose):
        for section, key in re.findall(r"\[(\w+)\]\s+(\w+)", span):
            if key not in keys.get(section, ()):
                problems.append(f"[{section}] {key}")
        m = re.match(r"^\[(\w+)\]$", span)
        if m and m.group(1) not in keys:
            problems.append(f"[{m.group(1)}]")
        m = re.match(r"^(\w+) = ", span)
        if m and m.group(1) not in every:
            problems.append(m.group(1))
    for lang, body in blocks:
        if lang != "toml":
            continue
        section = None
        for line in body:
            head = re.match(r"^\s*\[(\w+)\]", line)
            if head:
                section = head.group(1)
                if section not in keys:
                    problems.append(f"[{section}]")
                continue
            key = re.match(r"^\s*#?\s*(\w+)\s*=", line)
            if key and section and key.group(1) not in keys.get(section, ()):
                problems.append(f"[{section}] {key.group(1)}")
    assert not problems, f"{page.name} names config keys pate does not have: {problems}"


def _defines(module: str, name: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_pate_call_resolves(page):
    problems = []
    for dotted in set(re.findall(r"(?<![\w.])(pate(?:\.\w+)+)\(", page.read_text(encoding="utf-8"))):
        module, _, name = dotted.rpartition(".")
        if not _defines(module, name):
            problems.append(dotted)
    assert not problems, f"{page.name} calls what pate does not define: {problems}"


def test_every_environment_variable_named_is_read():
    sources = "\n".join(
        f.read_text(encoding="utf-8", errors="replace")
        for d in ("pate", "scripts", "tests", "benchmarks") for f in (ROOT / d).rglob("*")
        if f.suffix in (".py", ".sh") and f.name != "test_docs.py")
    named = {v for page in PAGES for v in re.findall(r"\bPATE_[A-Z0-9_]+", page.read_text(encoding="utf-8"))}
    assert not sorted(v for v in named if v not in sources)


# ---------------------------------------------------------------------------------------------
# (3) The quick start


def test_quick_start_is_the_two_scripts_and_ci_runs_its_test_command():
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    _, blocks = split_fences(section.group(1))
    assert blocks, "the quick start has no command block"
    commands = [ln.split(" #", 1)[0].strip() for ln in blocks[0][1] if ln.strip()]
    assert commands == QUICK_START
    for command in commands:
        assert (ROOT / command.split()[1]).is_file(), command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "bash scripts/test.sh" in [ln.strip() for ln in ci], ".ci/run must run the README's test command"


# ---------------------------------------------------------------------------------------------
# The checker itself catches what it is for


@pytest.mark.parametrize("line", [
    "pate plan pipelines/mnist.toml --made-up-option 3",
    "pate audit runs/mnist [--query I] [--format json] [--plt eps.png]",
    "pate data prepare --rooot data mnist",
    "pate datta prepare mnist",
    "pate export RUN_DIR --run-dir x",
    "python benchmarks/seeds.py pipelines/mnist.toml --made-up 1",
    "python benchmarks/no_such_benchmark.py",
])
def test_the_checker_refuses_made_up_commands(line):
    assert check_line(line)


@pytest.mark.parametrize("line", [
    "pate plan pipelines/mnist.toml --teachers 250 --queries 640   # or --target-epsilon 2",
    "pate data prepare mnist",
    "pate audit runs/mnist [--query I] [--format table|csv|json] [--plot eps.png]   # PRIVATE view",
    "pate --version",
    "exec .venv/bin/pate run pipelines/mnist-quick.toml \"$@\"",
    "timeout 480 python benchmarks/gpu.py --out gpu.json",
])
def test_the_checker_accepts_real_commands(line):
    assert not check_line(line)


def test_slugs_follow_github():
    assert slug("Private-kNN: each record pays for its own votes") == "private-knn-each-record-pays-for-its-own-votes"
    assert slug("Experiment tracking (MLflow)") == "experiment-tracking-mlflow"
    assert slug("The `pate` command") == "the-pate-command"
    assert slug("ε ≤ 1, σ1 × 2") == "ε--1-σ1--2"
