"""The architecture as a test: every import in the package follows the flow of the stages.

Stage order: data -> towers -> model -> {export, evaluation} -> {training, search} -> cli. A module
may import modules of its own stage and of earlier stages only, never a later stage nor a peer on
its level, and imports inside functions count too. `config`, `files`, `errors` and `_compat` sit
below every stage and import none; `testing` (the test doubles) may use any stage but the CLI.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dual_encoder"
SHARED = ("config", "files", "errors", "_compat")  # below every stage
RANK = {"data": 1, "towers": 2, "model": 3, "export": 4, "evaluation": 4, "training": 5, "search": 5, "testing": 6, "cli": 7}


def stage_of(module: str) -> str:
    """'dual_encoder.towers.image' -> 'towers'; the package itself -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported dual_encoder module) for every import anywhere in the file."""
    module = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                package = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                base = ".".join(package + ([node.module] if node.module else []))
            for alias in node.names:  # `from dual_encoder import towers` imports the towers stage
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else base))
    return [(line, name) for line, name in found if name == "dual_encoder" or name.startswith("dual_encoder.")]


def violation(importer: str, imported: str, shim: bool) -> str | None:
    """Why `importer` may not import `imported`, or None when it may."""
    source, target = stage_of(importer), stage_of(imported)
    if shim and target == "cli":
        return None  # `python -m dual_encoder.data` is a two-line shim over the command-line layer
    if source == target or target in SHARED or imported == "dual_encoder":
        return None
    if source in SHARED:
        return f"{source} is shared by every stage and imports none ({imported})"
    if source == "__init__":
        return "the package __init__ imports nothing (its public names load on first use)"
    if target == "__init__":
        return None
    if RANK[target] > RANK[source]:
        return f"{source} comes before {target} in the flow"
    if RANK[target] == RANK[source]:
        return f"{source} and {target} are peers"
    return None


def all_imports():
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, imported in imports_of(path):
            yield path, line, module_name(path), imported


def test_every_module_belongs_to_a_known_stage():
    stages = {stage_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert stages <= set(RANK) | set(SHARED) | {"__init__"}, stages - set(RANK) - set(SHARED)


def test_no_import_reaches_up_the_flow_or_across_to_a_peer():
    problems = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {imported}: {why}"
                for path, line, importer, imported in all_imports()
                if (why := violation(importer, imported, shim=path.name == "__main__.py"))]
    assert problems == []


@pytest.mark.parametrize("importer, imported, allowed", [
    ("dual_encoder.model.class_prior", "dual_encoder.towers.features", True),
    ("dual_encoder.model.class_prior", "dual_encoder.training.feature_cache", False),  # up the flow
    ("dual_encoder.evaluation.runs", "dual_encoder.export", False),  # peers
    ("dual_encoder.training.trainer", "dual_encoder.evaluation.plots", True),
    ("dual_encoder.config", "dual_encoder.data.tfrecords", False),  # shared modules import no stage
    ("dual_encoder.data.tfrecords", "dual_encoder.cli.sources", False),
])
def test_the_rule_itself(importer, imported, allowed):
    assert (violation(importer, imported, shim=False) is None) == allowed


def test_no_test_or_benchmark_edits_sys_path_or_imports_a_test_module():
    root = PACKAGE.parent
    test_modules = {p.stem for p in (root / "tests").glob("*.py")}
    problems = []
    for path in sorted([*(root / "tests").glob("*.py"), *(root / "benchmarks").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                problems.append(f"{path.name}:{node.lineno}: uses sys.path")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            problems += [f"{path.name}:{node.lineno}: imports the test module {n}" for n in names if n in test_modules]
    assert problems == []


def test_argparse_and_sys_exit_live_only_in_the_command_line_layer():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        exits = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "exit"
                 and getattr(n.value, "id", None) == "sys"]
        if ("argparse" in names or exits) and stage_of(module_name(path)) != "cli" and path.name != "__main__.py":
            found.append(module_name(path))
    assert found == []
