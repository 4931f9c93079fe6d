"""Pins the import rules of ARCHITECTURE.md: who may import whom among arca's packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED: dict[str, set[str]] = {
    "server": {"dicomweb", "dimse", "storage", "transcoding", "conformance", "config"},
    "dicomweb": {"storage", "transcoding", "conformance", "config"},
    "dimse": {"storage", "transcoding", "conformance", "config"},
    "storage": {"conformance", "config"},
    "transcoding": {"conformance", "config"},
    "conformance": set(),
    "config": set(),
}
# Third-party frameworks kept out of the layers that must not depend on them.
FORBIDDEN_EXTERNAL: dict[str, set[str]] = {
    "storage": {"starlette", "pynetdicom", "uvicorn"},
    "transcoding": {"starlette", "pynetdicom", "uvicorn"},
    "conformance": {"starlette", "uvicorn"},
    "config": {"starlette", "pynetdicom", "uvicorn", "pydicom"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_architecture(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    bad = []
    for f in files:
        for lineno, head in _imports(f):
            if head in ALLOWED and head != package and head not in ALLOWED[package]:
                bad.append(f"{f.relative_to(ROOT)}:{lineno} imports {head}")
            if head in FORBIDDEN_EXTERNAL.get(package, set()):
                bad.append(f"{f.relative_to(ROOT)}:{lineno} imports {head}")
    assert not bad, "imports crossing ARCHITECTURE.md's lines:\n" + "\n".join(bad)
