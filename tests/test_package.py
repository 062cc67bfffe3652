"""The package as a whole: importing it (every library module) leaves the process as it was."""

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dual_encoder

ROOT = Path(__file__).resolve().parents[1]


def library_modules() -> list[str]:
    """Every module of the package except the command-line layer and `__main__` entry points."""
    names = [m.name for m in pkgutil.walk_packages(dual_encoder.__path__, "dual_encoder.")]
    return sorted(n for n in names if not n.endswith("__main__") and n.split(".")[1] != "cli")


def test_importing_the_library_changes_no_environment_variable():
    modules = library_modules()
    assert len(modules) > 20
    # TensorFlow and h5py set variables of their own when imported (TF2_BEHAVIOR, HDF5_PLUGIN_PATH, ...)
    script = ("import json, os, sys, importlib\n"
              "import h5py, keras, keras_hub, matplotlib, tensorflow, tensorflow_datasets, tensorflow_text\n"
              "before = dict(os.environ)\n"
              "for name in sys.argv[1:]:\n    importlib.import_module(name)\n"
              "ours = ('TF_ENABLE_ONEDNN_OPTS', 'TF_CPP_MIN_LOG_LEVEL')\n"
              "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v or k in ours}))")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    out = subprocess.run([sys.executable, "-c", script, *modules], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_the_command_line_layer_sets_the_tools_tensorflow_defaults_unless_the_user_did():
    script = "import os, dual_encoder.cli; print(os.environ['TF_ENABLE_ONEDNN_OPTS'], os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    default = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert default.stdout.split() == ["1", "2"]
    chosen = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**env, "TF_ENABLE_ONEDNN_OPTS": "0"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.split() == ["0", "2"]


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Use it from Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_every_public_name_resolves_to_what_its_module_defines():
    for name in dual_encoder.__all__:
        assert getattr(dual_encoder, name) is not None, name
    assert dual_encoder.train.__module__ == "dual_encoder.training.trainer"
    assert dual_encoder.load_classification_dataset.__module__ == "dual_encoder.evaluation.datasets"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        dual_encoder.trian  # noqa: B018


def test_the_readme_python_example_uses_only_public_names():
    tree = ast.parse(readme_python_example())
    aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
               if a.name == "dual_encoder"}
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases}
    used |= {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "dual_encoder"
             for a in node.names}
    assert aliases and len(used) >= 8
    assert used <= set(dual_encoder.__all__), used - set(dual_encoder.__all__)
