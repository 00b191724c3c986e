"""The import boundary between the simulator and the learning side (DESIGN.md, "Layout").

``sim`` never imports torch; ``geo4d_policy`` never imports pydrake (or ``sim``) at import
time: the simulator is loaded only by the functions that run an episode or collect data, which
the rollout runner and the collector call inside their worker processes. Each runtime check
imports every module of a package in a fresh interpreter and reads ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from geo4d_policy.config import REPO_ROOT

_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _import_everything(package: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL, package], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sim_never_imports_torch():
    pytest.importorskip("pydrake")
    found = _import_everything("sim")
    assert len(found["modules"]) > 10 and "pydrake" in found["loaded"]  # the simulator was imported
    assert "torch" not in found["loaded"]
    assert "geo4d_policy" in found["loaded"]  # through the shared interface module only
    assert not {"diffusers", "accelerate", "safetensors"} & set(found["loaded"])


def test_learning_side_never_imports_the_simulator():
    found = _import_everything("geo4d_policy")
    names = set(found["modules"])
    assert {"geo4d_policy.policies.registry", "geo4d_policy.eval.runner", "geo4d_policy.cli.rollout",
            "geo4d_policy.models.pipeline"} <= names
    assert "torch" in found["loaded"]  # the learning side was imported
    assert not {"pydrake", "sim"} & set(found["loaded"])


# Modules whose functions import the simulator when they run: the oracle and expert policies
# (built inside a rollout worker) and the data collector's episode function (inside a collect
# worker). A new entry needs the same guarantee.
SIMULATOR_USERS = {"geo4d_policy/policies/oracle.py", "geo4d_policy/data/collect.py"}


def test_simulator_imports_are_inside_functions():
    users = set()
    for path in sorted((REPO_ROOT / "geo4d_policy").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            if not roots & {"sim", "pydrake"}:
                continue
            where = path.relative_to(REPO_ROOT).as_posix()
            scope = parents.get(node)
            while scope is not None and not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                scope = parents.get(scope)
            assert scope is not None, f"{where}:{node.lineno} imports the simulator at module level"
            users.add(where)
    assert users == SIMULATOR_USERS
