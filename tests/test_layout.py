"""The folder tree is the architecture: these checks keep the import arrows pointing one way.

- ``pate/privacy`` (the math) imports nothing from the rest of pate;
- a stage module never imports another stage module;
- no in-package import hides in a function body (the import graph is the module headers);
- only ``pate/privacy/mechanisms.py`` tells mechanisms apart by name;
- ``pate --help`` and the stage registry never import torch;
- the top-level modules and packages form layers: each imports only from layers below it, so
  there is no cycle between packages (the run directory and its artifact catalogue sit below the
  stages and the aggregation; the stages record what the aggregation returns);
- about ten top-level modules, the rest in one folder per domain.
"""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pate import stages

PATE = Path(__file__).resolve().parents[1] / "pate"


def modules():
    return sorted(PATE.rglob("*.py"))


def imported(path: Path, *, only_nested: bool = False) -> list[str]:
    """Absolute names of the pate modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(("pate", *path.relative_to(PATE).with_suffix("").parts[:-1]))
    nested = set()
    if only_nested:
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    names = []
    for node in ast.walk(tree):
        if only_nested and id(node) not in nested:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "pate"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                names += [module] + [f"{module}.{a.name}" for a in node.names]
            elif node.module and node.module.split(".")[0] == "pate":
                names.append(node.module)
    return names


def test_privacy_imports_nothing_above_it():
    for path in (PATE / "privacy").glob("*.py"):
        outside = [n for n in imported(path) if not n.startswith("pate.privacy")]
        assert not outside, f"{path.name} imports {outside}"


def test_no_stage_imports_another_stage():
    names = {s.module for s in stages.STAGES}
    for stage in stages.STAGES:
        path = PATE / "stages" / f"{stage.module.rsplit('.', 1)[1]}.py"
        others = {n for n in imported(path) if any(n == m or n.startswith(m + ".") for m in names - {stage.module})}
        assert not others, f"{path.name} imports {others}"


def test_no_in_package_import_inside_a_function():
    for path in modules():
        assert not imported(path, only_nested=True), f"{path.relative_to(PATE)} imports pate inside a function"


def test_only_mechanisms_compare_mechanism_names():
    pattern = re.compile(r"mechanism\s*[!=]=")
    for path in modules():
        if path != PATE / "privacy" / "mechanisms.py":
            assert not pattern.search(path.read_text(encoding="utf-8")), path.relative_to(PATE)


def test_registry_matches_the_stage_modules():
    for stage in stages.STAGES:
        module = importlib.import_module(stage.module)
        assert module.NAME == stage.name and callable(module.run)
        assert stage.help == module.__doc__.strip()  # the docstring is the command's --help


@pytest.mark.parametrize("code", ["import pate.cli", "from pate import stages; stages.STAGES[0].help"])
def test_cli_and_registry_do_not_import_torch(code):
    check = f"import sys; {code}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


# The layers, lowest first. A unit (top-level module or package) imports only from lower layers.
LAYERS = [
    {"errors"},
    {"io", "seeds", "progress", "workers"},  # workers: process pools that a Ctrl-C leaves tidy
    {"privacy"},
    {"nets"},  # model specs, the scattering transform and layer, augmentation
    {"config"},
    {"data"},  # sources, partition, record identity
    {"run"},  # the run directory, its artifact catalogue, the spend directory, where commands write
    {"features", "teachers", "student"},
    {"aggregation", "tracking"},
    {"stages"},
    {"export"},  # the student's formats (writing, reading) and the public folder of `pate export`
    {"views"},
    {"api", "cli"},
    {"__main__"},
]
MAX_TOP_LEVEL_MODULES = 12  # __init__ and __main__ included


def unit_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "pate"


def test_every_top_level_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PATE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"}
    layered = set().union(*LAYERS)
    assert units == layered, f"not layered: {sorted(units - layered)}; gone: {sorted(layered - units)}"


def test_imports_point_down_the_layers_only():
    rank = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    upward = []
    for path in modules():
        if path.parent == PATE and path.name == "__init__.py":
            continue  # the package's own front door (pate.load_run, ...) may import its API
        me = unit_of(".".join(("pate", *path.relative_to(PATE).with_suffix("").parts)))
        for name in imported(path):
            other = unit_of(name)
            if other in ("pate", me) or other not in rank:
                continue  # pate.__version__, or the unit itself
            if rank[other] >= rank[me] and not (rank[other] == rank[me] and other == me):
                upward.append(f"{path.relative_to(PATE)} imports {name}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_few_top_level_modules():
    loose = sorted(p.name for p in PATE.glob("*.py"))
    assert len(loose) <= MAX_TOP_LEVEL_MODULES, loose


def name_collections(path: Path, names: set[str]) -> list[str]:
    """Tuples, lists and sets written out of two or more of ``names`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                isinstance(e, ast.Constant) and e.value in names for e in node.elts):
            found.append(f"{path.relative_to(PATE)}:{node.lineno}")
    return found


def test_no_hand_written_tuple_of_mechanism_names_outside_the_registry():
    from pate.privacy.mechanisms import MECHANISMS

    found = [hit for path in modules() if path != PATE / "privacy" / "mechanisms.py"
             for hit in name_collections(path, set(MECHANISMS))]
    assert not found, f"mechanism names listed by hand (derive them from the registry): {found}"


def source_comparisons(text: str, names: set[str]) -> list[int]:
    """Lines of ``text`` that tell data sources apart by name: ``[data] source`` (``x.data.source``,
    ``DataConfig.source``) compared with any string or literal collection, or anything called
    ``source`` compared with a source's name. A registry look-up (``source in SOURCES``) is no test."""
    def is_source(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "source") or (
            isinstance(node, ast.Attribute) and node.attr == "source")

    def of_data(node) -> bool:  # config.data.source, run.config.data.source, self.source (DataConfig)
        return isinstance(node, ast.Attribute) and node.attr == "source" and (
            (isinstance(node.value, ast.Attribute) and node.value.attr == "data")
            or (isinstance(node.value, ast.Name) and node.value.id in ("self", "data", "config")))

    def literal(node) -> list:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return []

    lines = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for s in filter(is_source, operands):
                others = [v for o in operands if o is not s for v in literal(o)]
                if (others and of_data(s)) or set(others) & names:
                    lines.append(node.lineno)
    return sorted(set(lines))


def test_only_data_sources_tell_sources_apart():
    """Nothing outside ``pate/data`` tests ``[data] source`` by name: it asks the source
    (``pate.data.source_of``). config/data.py, below pate.data, validates through ``config.SOURCES``'s
    ``SourceKeys`` (what it must check before any data is read), never by name either."""
    from pate import data

    names = set(data.SOURCES)
    found = [f"{path.relative_to(PATE)}:{line}" for path in modules() if PATE / "data" not in path.parents
             for line in source_comparisons(path.read_text(encoding="utf-8"), names)]
    assert not found, f"data sources told apart by name (ask pate.data.source_of): {found}"
    found = [hit for path in modules() for hit in name_collections(path, names)]
    found += [f"{path.relative_to(PATE)}:{node.lineno}" for path in modules() if path != PATE / "config" / "data.py"
              for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.Dict) and len(node.keys) >= 2 and all(
                  isinstance(k, ast.Constant) and k.value in names for k in node.keys)]  # config/data.py: SOURCES itself
    assert not found, f"data source names listed by hand (derive them from pate.data.SOURCES): {found}"


@pytest.mark.parametrize("code, caught", [
    ('if config.data.source == "folders": pass', True),
    ('x = run.config.data.source != "mine"', True),
    ('x = self.source in ("builtin", "arrays")', True),
    ('x = source not in ["folders"]', True),
    ('x = self.source in SOURCES', False),  # the registry
    ('x = r.source == "teachers"', False),  # a ledger record's source, not the data's
])
def test_the_source_check_catches_comparisons(code, caught):
    assert bool(source_comparisons(code, {"builtin", "folders", "arrays"})) == caught
