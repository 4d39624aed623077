"""The package layout DESIGN.md fixes: one installable `groundforge` package, the dependency direction
(pipeline -> transforms -> schemas; train -> transforms, schemas; nothing imports pipeline but the CLI and the API),
no import cycles, and light start-up (`--help`, `--version` and `validate` import no heavy library)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "transforms", "schemas", "train")
HEAVY = ("apache_beam", "torch", "transformers", "spacy")


def _modules() -> dict[str, Path]:
    mods = {"groundforge": ROOT / "__init__.py"}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(("groundforge",) + parts)] = path
    return mods


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """groundforge modules imported by a file (module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("groundforge"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("groundforge"))
    return found


def test_sources_import_the_package_by_its_installed_name():
    """No `import pipeline` / `from transforms import ...`: only `groundforge.*` names exist once installed."""
    bad = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{name}: {m}" for m in mods if m.split(".")[0] in PACKAGES]
    assert bad == []


def test_no_import_cycle_among_module_level_imports():
    mods = _modules()
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in mods and m != name}
             for name, path in mods.items()}
    # a package's __init__ importing its own submodules is not a cycle of the submodule importing it back
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("package, forbidden", [
    ("transforms", ("groundforge.pipeline", "groundforge.train", "apache_beam")),
    ("schemas", ("groundforge.pipeline", "groundforge.train", "groundforge.transforms", "apache_beam")),
    ("train", ("groundforge.pipeline", "apache_beam")),
    ("pipeline", ("groundforge.train",)),
])
def test_dependency_direction(package, forbidden):
    """Anywhere in the file, lazy imports included (the CLI names train's commands as strings only)."""
    bad = []
    for name, path in _modules().items():
        if not name.startswith(f"groundforge.{package}"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{name}: {m}" for m in mods if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert bad == []


def test_nothing_imports_the_cli():
    users = [name for name, path in _modules().items()
             if "groundforge.pipeline.cli" in _imports(path, top_level_only=False) and name != "groundforge.pipeline.cli"]
    assert users == []


def _heavy_imports(*args: str) -> list[str]:
    """Heavy top-level packages imported by `python -X importtime -m groundforge.pipeline.cli ARGS`."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "groundforge.pipeline.cli", *args],
                         capture_output=True, text=True, cwd=ROOT)
    names = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    return sorted(n for n in names if n in HEAVY)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["build", "--help"]])
def test_start_up_imports_no_heavy_library(args):
    assert _heavy_imports(*args) == []


def test_validate_imports_no_heavy_library(tmp_path):
    from helpers import build_cli

    out, _ = build_cli("counting", tmp_path, [])
    assert _heavy_imports("validate", str(out)) == []


def test_every_option_has_help_text():
    import click

    from groundforge.pipeline.cli import main
    from groundforge.pipeline.registry import builder_names

    missing = []
    for cmd in [["render"], ["validate"], ["preview"], ["export"]] + [["build", b] for b in builder_names()]:
        ctx_cmd = main
        ctx = main.make_context("groundforge", list(cmd) + ["--help"], resilient_parsing=True)
        for name in cmd:
            ctx_cmd = ctx_cmd.get_command(ctx, name)
        missing += [f"{' '.join(cmd)} {p.opts[0]}" for p in ctx_cmd.params
                    if isinstance(p, click.Option) and not p.help]
    assert missing == []


def test_wheel_installs_one_groundforge_package(tmp_path):
    """Build the wheel, unpack it into a folder of its own, and import the API and the sample data from there."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True)
    (wheel,) = dist.glob("groundforge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"groundforge"}
    assert "groundforge/pipeline/sample_data/refcoco/refs(unc).p" in names
    assert "groundforge/pipeline/sample_data/docvqa/val_v1.0.json" in names
    assert "groundforge/pipeline/sample_data/docvqa/documents/gfxd0003_1.jpg" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import json, groundforge; from groundforge.pipeline.sample import SAMPLE_DIR;"
            "print(json.dumps([groundforge.__file__, groundforge.builders(), (SAMPLE_DIR / 'instances.json').is_file()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": ""})
    file, builders, sample = json.loads(out.stdout)
    assert file.startswith(str(site)) and builders == ["counting", "docvqa", "grit", "refcoco"] and sample
