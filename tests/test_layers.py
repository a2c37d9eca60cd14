"""The README's layering rule, enforced with import-linter (the contracts live in pyproject.toml).

vlmrl installs envs/, agents/ and reward_labelers/ as subpackages through a package-dir mapping,
which import-linter cannot follow in an editable install; the test lays the package out as it is
installed (a copy under tmp_path) and lints that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def installed_layout(root: Path) -> Path:
    package = root / "vlmrl"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "vlmrl", package, ignore=ignore)
    for folder in ("envs", "agents", "reward_labelers"):
        shutil.copytree(REPO / folder, package / folder, ignore=ignore)
    return root


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def layout(tmp_path: Path) -> Path:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: pip install -e '.[dev]' installs import-linter")
    return installed_layout(tmp_path)


def test_the_tree_keeps_every_import_contract(layout: Path) -> None:
    result = lint(layout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_every_module_has_a_place_in_the_layers() -> None:
    """A module left out of the contract would escape it: every top-level module of the package
    (and each installed subpackage) must be named in a layer."""
    import tomllib

    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {name.strip() for layer in contract["layers"] for name in layer.replace("|", ":").split(":")}
    modules = {f"vlmrl.{path.stem}" for path in (REPO / "vlmrl").glob("*.py") if path.stem != "__init__"}
    modules |= {"vlmrl.envs", "vlmrl.agents", "vlmrl.reward_labelers"}
    assert sorted(modules - named) == []


def test_an_upward_import_breaks_the_layers_contract(layout: Path) -> None:
    # An env (bottom) reaching for the config (top), inside a function: still an upward import.
    with open(layout / "vlmrl/envs/cartpole.py", "a") as module:
        module.write("\n\ndef _upward():\n    from vlmrl.config import load_config\n")
    result = lint(layout)
    assert result.returncode != 0
    assert "vlmrl.envs is not allowed to import vlmrl.config" in result.stdout
    assert "vlmrl.envs.cartpole -> vlmrl.config" in result.stdout


def test_a_cycle_between_siblings_breaks_the_acyclic_contract(layout: Path) -> None:
    # Two command modules in one layer (allowed to import each other) importing each other.
    with open(layout / "vlmrl/record.py", "a") as module:
        module.write("\n\ndef _cycle():\n    from vlmrl.collect import add_parser\n")
    with open(layout / "vlmrl/collect.py", "a") as module:
        module.write("\n\ndef _cycle():\n    from vlmrl.record import add_parser\n")
    result = lint(layout)
    assert result.returncode != 0
    assert "no import cycles between sibling modules" in result.stdout and "BROKEN" in result.stdout
