"""The layout: which subpackage may import which (one table, here), no import circle, small folders.

`ALLOWED` is the one home of the arrows between units (a unit is a subpackage, or the modules at a
package's top, named by the package). Each unit's `__init__.py` docstring repeats its row ("May
import: ..."), and the layout page (docs/design/layout.md) shows every row with the docstring's first line: both
are checked against the table, so neither can drift. Imports inside functions count as much as
those at the top of a file: a lazy import is an arrow all the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("interests", "exporters", "streams", "explore")
MAX_MODULES = 12  # per folder of a package: a newcomer reads the folder's names at a glance

# unit -> the units it may import besides itself, bottom to top; "pkg.*" is every unit of pkg.
ALLOWED: dict[str, tuple[str, ...]] = {
    "interests": (),
    "interests.runtime": (),
    "interests.data": ("interests",),
    "interests.clusters": ("interests", "interests.data"),
    "interests.seqrec": ("interests", "interests.runtime", "interests.data", "interests.clusters"),
    "interests.novelty": ("interests", "interests.runtime", "interests.data", "interests.clusters",
                          "interests.seqrec"),
    "interests.alignment": ("interests", "interests.data", "interests.clusters", "interests.novelty"),
    "interests.evaluation": ("interests", "interests.data", "interests.clusters", "interests.seqrec",
                             "interests.novelty"),
    "exporters": ("interests.*",),
    "streams.inference": ("interests.runtime",),
    "streams": ("streams.inference",),
    "streams.core": ("interests.*", "streams", "streams.inference"),
    "streams.web": ("streams", "streams.core"),
    "streams.infra": ("streams", "streams.inference", "streams.web"),
    "streams.wiring": ("interests.*", "streams", "streams.core", "streams.web", "streams.inference", "streams.infra"),
    "streams.precompute": ("interests.*", "streams", "streams.core", "streams.inference", "streams.infra",
                           "streams.wiring"),
    "explore": ("interests.*", "exporters", "streams.*"),
}


def unit_of(module: str, root: Path) -> str | None:
    """The unit a dotted module belongs to (None: not one of the project's packages)."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] in ("interests", "streams") and len(parts) > 1 and (root / parts[0] / parts[1]).is_dir():
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def module_name(py: Path, root: Path) -> str:
    return ".".join(py.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(py: Path, root: Path) -> set[str]:
    """Every project module `py` imports, anywhere in the file (`from a import b` is `a.b` when b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(py.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                path = root.joinpath(*sub.split("."))
                out.add(sub if path.with_suffix(".py").is_file() or path.is_dir() else node.module)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def project_files(root: Path) -> list[Path]:
    return sorted(py for pkg in PACKAGES if (root / pkg).is_dir() for py in (root / pkg).rglob("*.py"))


def expand(allowed: tuple[str, ...]) -> set[str]:
    return {u for a in allowed for u in ALLOWED if u == a or (a.endswith(".*") and u.split(".")[0] == a[:-2])}


def upward_imports(root: Path) -> list[str]:
    """'path: unit -> unit' for every import the table does not allow."""
    bad = []
    for py in project_files(root):
        me = unit_of(module_name(py, root), root)
        for target in sorted(imported_modules(py, root)):
            other = unit_of(target, root)
            if other and other != me and other not in expand(ALLOWED[me]):
                bad.append(f"{py.relative_to(root)}: {me} -> {other} ({target})")
    return bad


def import_circles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's strongly connected
    components of the module graph, larger than one module)."""
    graph = {module_name(py, root): imported_modules(py, root) for py in project_files(root)}
    graph = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in graph[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            group = []
            while True:
                t = stack.pop()
                group.append(t)
                if t == m:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return out


def may_import_line(doc: str) -> set[str]:
    """The units a docstring's 'May import:' paragraph names (empty for 'nothing of this project')."""
    match = re.search(r"May import: (.*?)(?:\n\n|\Z)", doc, re.S)
    assert match, "no 'May import:' paragraph"
    return set(re.findall(r"`([\w.*]+)`", match.group(1)))


def unit_init(unit: str) -> Path:
    return ROOT.joinpath(*unit.split(".")) / "__init__.py"


def test_no_import_goes_against_the_table() -> None:
    assert upward_imports(ROOT) == []


def test_the_table_has_no_circle_and_the_code_none_either() -> None:
    done: list[str] = []
    left = dict(ALLOWED)
    while left:  # peel the units whose allowed imports are all placed: a circle would stop this
        ready = [u for u, allowed in left.items() if expand(allowed) - {u} <= set(done)]
        assert ready, f"the table goes round: {sorted(left)}"
        done += ready
        for u in ready:
            del left[u]
    assert import_circles(ROOT) == []


def test_every_unit_is_in_the_table_and_its_docstring_repeats_its_row() -> None:
    units = {unit_of(module_name(py, ROOT), ROOT) for py in project_files(ROOT)}
    assert units == set(ALLOWED)
    for unit, allowed in ALLOWED.items():
        doc = ast.get_docstring(ast.parse(unit_init(unit).read_text())) or ""
        assert may_import_line(doc) == set(allowed), unit


def test_the_layout_page_is_the_table_with_each_units_role() -> None:
    rows = {}
    for line in (ROOT / "docs" / "design" / "layout.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[\w/]+/`", cells[0]):
            rows[cells[0].strip("`/").replace("/", ".")] = cells[1:]
    assert set(rows) >= set(ALLOWED), sorted(set(ALLOWED) - set(rows))
    for unit, allowed in ALLOWED.items():
        role, may = rows[unit]
        doc = ast.get_docstring(ast.parse(unit_init(unit).read_text())) or ""
        assert role == doc.splitlines()[0], unit
        assert set(re.findall(r"`([\w.*]+)`", may)) == set(allowed), unit


def test_no_folder_holds_more_than_a_dozen_modules() -> None:
    """The packages, the tests (grouped as the code is), the benchmarks and the scripts."""
    for top in (*PACKAGES, "tests", "benchmarks", "scripts", "docker"):
        for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir() and p.name != "__pycache__")]:
            modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= MAX_MODULES, (folder.relative_to(ROOT), len(modules))


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return _tree(tmp_path, {"interests/__init__.py": "", "interests/data/__init__.py": "",
                            "interests/novelty/__init__.py": "", "interests/novelty/rules.py": "X = 1\n",
                            "interests/data/splits.py": "import numpy\n"})


def test_a_planted_upward_import_is_found_even_inside_a_function(planted: Path) -> None:
    assert upward_imports(planted) == []
    (planted / "interests/data/splits.py").write_text("def f():\n    from interests.novelty import rules\n")
    assert upward_imports(planted) == [
        "interests/data/splits.py: interests.data -> interests.novelty (interests.novelty.rules)"]


def test_a_planted_circle_is_found(planted: Path) -> None:
    assert import_circles(planted) == []
    (planted / "interests/novelty/rules.py").write_text("def f():\n    import interests.novelty.prior\n")
    (planted / "interests/novelty/prior.py").write_text("from interests.novelty.rules import X\n")
    assert import_circles(planted) == [["interests.novelty.prior", "interests.novelty.rules"]]


def test_the_core_loads_neither_faust_nor_a_kafka_client() -> None:
    import subprocess
    import sys

    modules = [module_name(py, ROOT) for py in sorted((ROOT / "streams" / "core").glob("*.py"))]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted({k.split('.')[0] for k in sys.modules} & {'faust', 'mode', 'kafka', 'aiokafka'}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert res.stdout.strip() == "[]"


def test_streams_never_imports_torch() -> None:
    import subprocess
    import sys

    # streams.wiring.app builds the worker from the environment at import (a catalog and a broker): the
    # modules it is made of are all imported here, and the integration tests run it without torch.
    modules = [module_name(py, ROOT) for py in sorted((ROOT / "streams").rglob("*.py"))]
    modules = [m for m in modules if m != "streams.wiring.app"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert res.stdout.strip() == "False"
