"""The import rule of docs/ARCHITECTURE.md, read from the source with ast:

- no service imports another service (each talks to the others over gRPC);
- shared/ (the library) imports no service;
- services/stack.py (make run, make check-config) is not a service and imports
  none: it starts each as a process by its module name.

Imports inside functions and `if TYPE_CHECKING:` blocks count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(
    p.name for p in (ROOT / "services").iterdir() if p.is_dir() and (p / "__init__.py").exists()
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file; relative imports
    are resolved against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from services import queue` names a service through the package.
            if module == "services":
                found.extend((node.lineno, f"services.{alias.name}") for alias in node.names)
    return found


def _service_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "services" and parts[1] in SERVICES:
        return parts[1]
    return None


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "gen" not in p.relative_to(ROOT).parts)


def _where(path: Path, line: int, module: str) -> str:
    return f"{path.relative_to(ROOT)}:{line} imports {module}"


def _service_violations() -> list[str]:
    return [
        _where(path, line, module)
        for service in SERVICES
        for path in _python_files(ROOT / "services" / service)
        for line, module in _imports(path)
        if _service_of(module) not in (None, service)
    ]


def _shared_violations() -> list[str]:
    return [
        _where(path, line, module)
        for path in _python_files(ROOT / "shared")
        for line, module in _imports(path)
        if module == "services" or module.startswith("services.")
    ]


def _stack_violations() -> list[str]:
    return [
        _where(path, line, module)
        for path in sorted((ROOT / "services").glob("*.py"))
        for line, module in _imports(path)
        if _service_of(module) is not None
    ]


def violations() -> list[str]:
    return [*_service_violations(), *_shared_violations(), *_stack_violations()]


def test_the_tree_follows_the_import_rule() -> None:
    assert violations() == []


def test_there_are_services_to_check() -> None:
    # A rule over nothing would pass forever.
    assert {"tasks", "queue", "verification", "gateway"} <= set(SERVICES)


@pytest.mark.parametrize(
    ("where", "source", "bad"),
    [
        ("services/tasks/x.py", "from services.queue.model import Job\n", True),
        ("services/tasks/x.py", "import services.verification.engine\n", True),
        ("services/tasks/x.py", "from services import gateway\n", True),
        ("services/tasks/x.py", "def f():\n    from services.queue import policy\n", True),
        ("services/tasks/x.py", "from ..queue import policy\n", True),
        ("services/tasks/x.py", "from .model import Task\nfrom shared import errors\n", False),
        ("services/tasks/x.py", "from services.tasks.settings import TasksSettings\n", False),
        ("shared/x.py", "from services.tasks.settings import TasksSettings\n", True),
        ("shared/x.py", "from shared.config import CommonSettings\n", False),
        ("services/x.py", "from services.queue.settings import QueueSettings\n", True),
        ("services/x.py", "from services.queue.main import build_spec\n", True),
        ("services/x.py", "from shared.config import CommonSettings\n", False),
    ],
)
def test_the_rule_catches_what_it_should(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, source: str, bad: bool
) -> None:
    # The same check over a small tree of its own, so that the rule is shown to fail.
    for service in ("tasks", "queue", "verification", "gateway"):
        (tmp_path / "services" / service).mkdir(parents=True)
        (tmp_path / "services" / service / "__init__.py").write_text("")
    (tmp_path / "shared").mkdir()
    target = tmp_path / where
    target.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert bool(violations()) is bad
