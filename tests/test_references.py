"""No stale module paths: every ``pate.x.y`` named in a docstring or comment of pate/, or in the
docs, is a module or an attribute that exists (format ids such as ``pate.ensemble/1`` are
on-disk names, not module paths, and are left alone)."""
from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"(?<![\w./-])pate(?:\.[A-Za-z_]\w*)+(?![\w/-])")
NOT_MODULES = {"pate.json"}  # the metadata entry a student file describes itself in


def prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the comments and docstrings of a Python file, or every line of a page."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    found = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(text).readline)
             if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                found.append((node.body[0].lineno, doc))
    return found


def resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            fields = getattr(obj, "__dataclass_fields__", None) or getattr(obj, "_fields", ())
            if not hasattr(obj, attr) and attr not in fields:
                return False
            obj = getattr(obj, attr, None)
        return True
    return False


def test_every_pate_path_in_docstrings_comments_and_docs_exists():
    files = sorted((ROOT / "pate").rglob("*.py")) + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    stale = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in files for line, text in prose(path)
             for name in (m.group(0).rstrip(".") for m in DOTTED.finditer(text))
             if name not in NOT_MODULES and not resolves(name)]
    assert not stale, "names of modules or attributes that do not exist:\n" + "\n".join(stale)
