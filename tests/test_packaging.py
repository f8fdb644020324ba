"""pyproject.toml installs every package of the tree under the one namespace ring1."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_installed_under_ring1() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        "ring1." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("codegen", "generated", "runtime")
        for init in (ROOT / top).rglob("__init__.py")
        if "templates" not in init.parts
    }
    assert on_disk == listed
    for package in listed:
        assert config["package-dir"][package] == package.removeprefix("ring1.").replace(".", "/")
