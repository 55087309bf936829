"""The package's version follows the Rust workspace's."""

import re
from pathlib import Path

import larder

ROOT = Path(__file__).parents[2]


def _cargo_workspace_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    section = re.search(r"(?ms)^\[workspace\.package\]\s*$(.*?)(?=^\[|\Z)", text)
    assert section, "Cargo.toml has no [workspace.package]"
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', section.group(1))
    assert version, "[workspace.package] has no version"
    return version.group(1)


def _pyproject_version() -> str:
    text = (ROOT / "python" / "pyproject.toml").read_text()
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
    assert version
    return version.group(1)


def test_versions_match_cargo_workspace() -> None:
    cargo = _cargo_workspace_version()
    assert _pyproject_version() == cargo
    assert larder.__version__ == cargo
