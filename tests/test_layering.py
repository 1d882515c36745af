"""The package's layers: no module imports from a layer above its own (every import statement, those
inside functions included, read from the source), and the old flat module paths still import."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer of each part of the package, lowest first; a module may import its own layer and those below
LAYERS = {
    "kernels": 0,      # kernels/ (installed as drsformer_fast.kernels)
    "model": 1,        # the model side: top-level modules, ops/
    "images": 2,       # image tasks, given a model
    "training": 3,     # the trainer
    "perf": 4,         # measurement and checking tools
    "cli": 5,          # the command line
}
# what the kernels may take from the package: its shared input validation
KERNELS_MAY_IMPORT = {"drsformer_fast._validation"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "kernels":
        parts.insert(0, "drsformer_fast")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "model"  # drsformer_fast/__init__.py
    second = parts[1]
    if second in ("kernels", "images", "training", "perf"):
        return second
    if second in ("cli", "__main__"):
        return "cli"
    return "model"


def _imports(path: Path):
    """(imported module, line) for every import in the file, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # each imported name may be a module of its own (`from . import bench`)
            for alias in node.names:
                yield f"{module}.{alias.name}", node.lineno


def _package_files():
    return sorted(ROOT.glob("drsformer_fast/**/*.py")) + sorted(ROOT.glob("kernels/*.py"))


def _resolve_moved(module: str) -> str:
    from drsformer_fast._moved import MOVED

    for old, new in MOVED.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old):]
    return module


def test_no_import_runs_up_a_layer():
    bad = []
    for path in _package_files():
        here = _part(_module_name(path))
        for module, line in _imports(path):
            if module != "drsformer_fast" and not module.startswith("drsformer_fast."):
                continue
            module = _resolve_moved(module)
            there = _part(module)
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if here == "kernels":
                if there != "kernels" and not any(module == m or module.startswith(m + ".")
                                                  for m in KERNELS_MAY_IMPORT):
                    bad.append(f"{where} (kernels take only {sorted(KERNELS_MAY_IMPORT)} from the package)")
            elif LAYERS[there] > LAYERS[here]:
                bad.append(f"{where} ({here} -> {there}: a lower layer imports a higher one)")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # the rule is only as good as the scan: a lazy import in a function body is an import too
    source = "def f():\n    from ..perf import bench\n    return bench\n"
    path = ROOT / "drsformer_fast" / "ops" / "_layering_probe.py"
    assert not path.exists()
    path.write_text(source)
    try:
        found = list(_imports(path))
    finally:
        path.unlink()
    assert found == [("drsformer_fast.perf.bench", 2)]


def test_model_side_loads_no_tools():
    # what the model needs at run time, imported in a fresh process, pulls in neither perf, images,
    # training nor the command line
    code = (
        "import sys, drsformer_fast\n"
        "from drsformer_fast import DRSformer, patch, graphed, load_checkpoint, ChannelLayerNorm\n"
        "import drsformer_fast.ops, drsformer_fast.kernels\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in (['drsformer_fast', 'perf'],"
        " ['drsformer_fast', 'images'], ['drsformer_fast', 'training'], ['drsformer_fast', 'cli']))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("old", sorted(__import__("drsformer_fast._moved", fromlist=["MOVED"]).MOVED))
def test_old_module_paths_are_the_new_modules(old):
    from drsformer_fast._moved import MOVED

    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__name__ == MOVED[old] and module.__spec__.name == MOVED[old]


def test_python_dash_m_runs_a_moved_module():
    out = subprocess.run([sys.executable, "-m", "drsformer_fast.kernels.compile_check", "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "--arch" in out.stdout
