"""requirements.lock pins what the tests run with, and the image installs under it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"requirements.lock: not a pin: {line!r}"
        pins[_canonical(name)] = version
    return pins


def test_the_tests_run_with_exactly_the_locked_versions() -> None:
    pins = _locked()
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {name: (installed[name], version) for name, version in pins.items() if installed.get(name) != version}
    assert not drift, f"installed vs locked (run bash scripts/dev setup, or bash scripts/dev lock): {drift}"


def test_every_requirement_of_pyproject_is_locked() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    names = {_canonical(re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]) for requirement in wanted}
    missing = names - set(_locked())
    assert not missing, f"in pyproject.toml but not in requirements.lock: {sorted(missing)}"


def test_the_image_installs_under_the_lock() -> None:
    containerfile = (ROOT / "Containerfile").read_text()
    assert re.search(r"pip install --constraint \S*requirements\.lock /wheels/\*\.whl", containerfile)
    assert "requirements.lock" not in (ROOT / ".containerignore").read_text().split()
