"""Static typing: mypy passes on the package (pyproject's ``[tool.mypy]``), a user's script sees every
public name with its real type, ``__all__`` is the registry plus the helpers, and ``py.typed`` ships.

One mypy run checks the package and three small user scripts together (cold: ~25 s of CPU, mostly
torch's stubs; warm, from the cache under ``.pytest_cache``: a few seconds).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import adaptim
from adaptim.registry import registered

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "src" / "adaptim" / "__init__.py"

#: what ``__all__`` holds besides the registered classes
HELPERS = {
    "AdaptimOptimizer",
    "OptimInfo",
    "available",
    "create",
    "get",
    "layerwise_lr_groups",
    "param_groups",
    "register",
    "registered",
}

# What `mypy --strict` checks, as inline flags (`strict` itself is not allowed inline).
STRICT = (
    "# mypy: disallow-any-generics, disallow-subclassing-any, disallow-untyped-calls, "
    "disallow-untyped-defs, disallow-incomplete-defs, check-untyped-defs, "
    "disallow-untyped-decorators, warn-return-any, no-implicit-reexport, strict-equality, "
    "extra-checks\n"
)

# A user's training script: must type-check with no error under --strict's flags.
USER_SCRIPT = (
    STRICT
    + """
from typing import Any

import torch
from typing_extensions import assert_type

import adaptim
from adaptim import AdaBelief, Lookahead

model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
opt = adaptim.AdaBelief(model.parameters(), lr=1e-3, weight_decay=1e-2)
assert_type(opt, AdaBelief)
as_torch: torch.optim.Optimizer = opt
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)

made = adaptim.create("adan", model, lr=1e-3, weight_decay=0.02)
assert_type(made, torch.optim.Optimizer)
also = adaptim.create("adabelief", model.parameters(), lr=1e-3)

groups = adaptim.param_groups(model, weight_decay=0.05, no_decay=["0.*"])
assert_type(groups, list[dict[str, Any]])
layered = adaptim.layerwise_lr_groups(model, lr=1e-3, layer_decay=0.75, weight_decay=0.05)
wrapped = adaptim.Lookahead(adaptim.RAdam(layered, lr=1e-3))
assert_type(wrapped, Lookahead)

names: list[str] = adaptim.available("ada*") + adaptim.available(kind="wrapper")
info: adaptim.OptimInfo = adaptim.get("adabelief")
kinds: list[adaptim.OptimInfo] = adaptim.registered(kind="tool")


class MyAdamW(adaptim.AdamW):
    pass


def step(optimizer: adaptim.AdaptimOptimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
"""
)

# Mistakes a type checker must catch: each line marked `# E: code` gives exactly that error.
USER_ERRORS = (
    STRICT
    + """
import torch

import adaptim

model = torch.nn.Linear(2, 2)
adaptim.AdaBelief(model.parameters(), lr="fast")  # E: arg-type
adaptim.create("adabelief", 3)  # E: arg-type
adaptim.NoSuchOptimizer  # E: attr-defined
adaptim.available(kinds="all")  # E: call-arg
adaptim.param_groups(model, weight_decay=0.1, no_decay=[1])  # E: list-item
"""
)


def _user_names() -> str:
    """``reveal_type`` of every name in ``adaptim.__all__``: a checker must see each one's type."""
    lines = [STRICT, "import adaptim\n"]
    lines += [f"reveal_type(adaptim.{name})\n" for name in adaptim.__all__]
    return "".join(lines)


_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<kind>error|note): (?P<msg>.*)$")


@pytest.fixture(scope="module")
def mypy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One mypy run over the package and the user scripts; its messages grouped by file name."""
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("mypy") if cache is not None else tmp_path_factory.mktemp("mypy")
    tmp = tmp_path_factory.mktemp("typing")
    scripts = {
        "user_script.py": USER_SCRIPT,
        "user_errors.py": USER_ERRORS,
        "user_names.py": _user_names(),
    }
    for name, text in scripts.items():
        (tmp / name).write_text(text)
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(cache_dir),
        "--no-color-output",
        "--no-error-summary",
        "--show-absolute-path",
        str(ROOT / "src" / "adaptim"),
        *(str(tmp / name) for name in scripts),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1) and not proc.stderr.strip(), proc.stdout + proc.stderr
    by_file: dict[str, list[tuple[int, str, str]]] = {}
    for raw in proc.stdout.splitlines():
        m = _LINE.match(raw)
        if m is None:
            continue
        path = Path(m["path"])
        # a user script by its name: from the cache, mypy reports the path of an earlier run's copy
        key = str(path) if path.is_relative_to(ROOT / "src") else path.name
        by_file.setdefault(key, []).append((int(m["line"]), m["kind"], m["msg"]))
    return {"by_file": by_file, "stdout": proc.stdout}


def _errors(messages: list[tuple[int, str, str]]) -> list[str]:
    return [f"{line}: {msg}" for line, kind, msg in messages if kind == "error"]


def test_mypy_passes_on_the_package(mypy: dict) -> None:
    package = str(ROOT / "src" / "adaptim")
    errors = [
        f"{path}:{e}"
        for path, msgs in mypy["by_file"].items()
        if path.startswith(package)
        for e in _errors(msgs)
    ]
    assert not errors, "mypy errors in the package:\n" + "\n".join(errors)


def test_a_users_script_type_checks(mypy: dict) -> None:
    assert not _errors(mypy["by_file"].get("user_script.py", [])), mypy["stdout"]


def test_a_checker_catches_a_users_mistakes(mypy: dict) -> None:
    """The names are not ``Any``: wrong arguments and unknown names are errors."""
    expected = {
        (i, m.group(1))
        for i, text in enumerate(USER_ERRORS.splitlines(), start=1)
        if (m := re.search(r"# E: ([a-z-]+)$", text))
    }
    got = {
        (line, re.search(r"\[([a-z-]+)\]$", msg).group(1))  # type: ignore[union-attr]
        for line, kind, msg in mypy["by_file"].get("user_errors.py", [])
        if kind == "error"
    }
    assert got == expected, mypy["stdout"]


def test_every_public_name_is_visible_with_its_type(mypy: dict) -> None:
    """``reveal_type(adaptim.X)`` for each name in ``__all__``: a class or function, never ``Any``
    (a name a checker cannot see is an ``attr-defined`` error and reveals ``Any``)."""
    msgs = mypy["by_file"].get("user_names.py", [])
    assert not _errors(msgs), mypy["stdout"]
    revealed = {line: msg for line, kind, msg in msgs if kind == "note"}
    first = 3  # the flags line, the import, then one reveal_type per name
    for i, name in enumerate(adaptim.__all__):
        msg = revealed.get(first + i, "")
        assert msg.startswith("Revealed type is") and "Any" != msg.split('"')[1], (name, msg)
        assert "def " in msg or "overload" in msg, (name, msg)


def test_all_is_the_registered_classes_plus_the_helpers() -> None:
    classes = {info.cls.__name__ for info in registered()}
    assert len(adaptim.__all__) == len(set(adaptim.__all__))
    missing = classes - set(adaptim.__all__)
    assert not missing, f"registered but not imported by name in adaptim/__init__.py: {missing}"
    assert set(adaptim.__all__) == classes | HELPERS
    for info in registered():
        assert getattr(adaptim, info.cls.__name__) is info.cls


def test_every_public_name_is_imported_by_name() -> None:
    """Type checkers see only names bound statically: each name in ``__all__`` must come from a
    ``from ... import Name`` in ``__init__.py`` (not ``globals().update``), and ``__all__`` must be
    a literal list."""
    tree = ast.parse(INIT.read_text())
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    literal = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    assert len(literal) == 1 and isinstance(literal[0], ast.List)
    assert ast.literal_eval(literal[0]) == adaptim.__all__
    assert set(adaptim.__all__) <= imported, set(adaptim.__all__) - imported
    assert "globals" not in INIT.read_text()


def test_py_typed_ships_in_the_wheel(tmp_path: Path) -> None:
    """PEP 561: without ``py.typed`` in the installed package, checkers treat adaptim as untyped."""
    assert (ROOT / "src" / "adaptim" / "py.typed").is_file()
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "adaptim", src / "adaptim", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("adaptim-*.whl")
    assert "adaptim/py.typed" in zipfile.ZipFile(wheel).namelist()
