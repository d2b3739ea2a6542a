"""The layout rules of docs/architecture.md, checked on the code: which part may import which,
and no import cycle between modules.

The rules table of docs/architecture.md (after ``<!-- rules: ... -->``) names every part of the
library and the parts it may import; an arrow to any other part is an error. Imports are read with
``ast`` from every module, including those inside functions (an import hidden in a function to
dodge a cycle is still an arrow).
"""
import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rsfm_ds"
DOC = ROOT / "docs" / "architecture.md"


def modules() -> Dict[str, Tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``)."""
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (f, is_package)
    return out


def imports(name: str, path: Path, is_package: bool, known: Set[str]) -> Set[str]:
    """The rsfm_ds modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: List[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[:len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        found.update(t for t in targets if t.split(".")[0] == "rsfm_ds" and t != name)
    return found


def rules() -> Dict[str, Set[str]]:
    """Part -> the parts it may import, from the rules table of docs/architecture.md."""
    text = DOC.read_text()
    start = text.index("<!-- rules:")
    table = {}
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if table:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        parts = re.findall(r"`([\w.]+)`", cells[0])
        if not parts or set(cells[0]) <= {"-", " "}:
            continue
        allowed = set(re.findall(r"`([\w.]+)`", cells[-1]))
        table[parts[0]] = allowed
    return table


def part_of(module: str, parts: Set[str]) -> str:
    """The longest part name that ``module`` is or lies under."""
    matches = [p for p in parts if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else ""


MODULES = modules()
GRAPH = {m: imports(m, f, pkg, set(MODULES)) for m, (f, pkg) in MODULES.items()}
RULES = rules()


def test_the_rules_table_names_real_parts_and_covers_every_module():
    assert len(RULES) >= 10, "the rules table of docs/architecture.md was not found"
    for part, allowed in RULES.items():
        assert any(m == part or m.startswith(part + ".") for m in MODULES), f"{part}: no such module"
        assert allowed <= set(RULES), f"{part}: may import unknown parts {sorted(allowed - set(RULES))}"
    uncovered = [m for m in MODULES if not part_of(m, set(RULES))]
    assert not uncovered, f"modules in no part of docs/architecture.md's rules table: {uncovered}"


def test_no_forbidden_arrow():
    parts = set(RULES)
    bad = []
    for module, targets in GRAPH.items():
        source = part_of(module, parts)
        for target in targets:
            dest = part_of(target, parts)
            if dest != source and dest not in RULES[source]:
                bad.append(f"{module} -> {target} ({source} may import only {sorted(RULES[source]) or 'nothing'})")
    assert not bad, "\n".join(sorted(bad))


def test_the_issue_arrows_are_forbidden_by_the_table():
    """The arrows the layout exists to prevent stay forbidden, whatever else the table allows."""
    forbidden = [("rsfm_ds.models", "rsfm_ds.engine"), ("rsfm_ds.models", "rsfm_ds.data"),
                 ("rsfm_ds.models", "rsfm_ds.cli"), ("rsfm_ds.ops", "rsfm_ds.models"),
                 ("rsfm_ds.data", "rsfm_ds.engine"), ("rsfm_ds.data", "rsfm_ds.evaluation"),
                 ("rsfm_ds.evaluation", "rsfm_ds.engine"), ("rsfm_ds.checkpoint", "rsfm_ds.engine")]
    forbidden += [(part, "rsfm_ds.cli") for part in RULES if part != "rsfm_ds.cli"]
    allowed = [f"{a} -> {b}" for a, b in forbidden if b in RULES[a]]
    assert not allowed, f"docs/architecture.md allows arrows it must forbid: {allowed}"


def test_no_import_cycle_between_modules():
    # Tarjan's strongly connected components over the module graph.
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module):
    lines = len(MODULES[module][0].read_text().splitlines())
    assert lines <= 600, f"{module}: {lines} lines; split it by job"


def test_the_graph_walker_sees_relative_function_level_and_package_imports(tmp_path):
    """The checker itself, on a hand-made case: a function-level relative import, ``from . import
    mod`` resolved to the module, and an absolute import."""
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom .sibling import x\n\ndef f():\n    from ..other import mod\n"
                   "    import rsfm_ds.errors\n")
    known = {"rsfm_ds.pkg.sibling", "rsfm_ds.other", "rsfm_ds.other.mod", "rsfm_ds.errors"}
    assert imports("rsfm_ds.pkg.m", src, False, known) == {"rsfm_ds.pkg.sibling", "rsfm_ds.other.mod",
                                                            "rsfm_ds.errors"}


TORCH_FREE_COMMANDS = [
    ["study", "--config", "configs/study/scaling.yaml", "--count"],
    ["study", "--config", "configs/study/scaling.yaml", "--pending-arrays"],
    ["study", "--config", "configs/study/ablation.yaml", "--list"],
    ["synth", "--help"],
    ["plan", "--help"],
]


@pytest.mark.parametrize("argv", TORCH_FREE_COMMANDS, ids=lambda a: " ".join(a[:1] + a[-1:]))
def test_commands_that_only_read_configs_import_no_torch(argv):
    """The SLURM study chain runs these bookkeeping commands between jobs: torch would cost ~2 s
    each (the run configs' dataclasses live in torch-free modules for this)."""
    code = ("import sys\nfrom rsfm_ds.cli import main\ntry:\n    assert main(%r) == 0\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint('torch imported:', 'torch' in sys.modules)" % (argv,))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "torch imported: False", proc.stdout[-500:]
