"""The package type-checks under ``mypy --strict`` (pyproject.toml's [tool.mypy]).

A test rather than a separate CI step so that the README's one test command
(which ``.ci/run`` calls) is also the type check: a change that breaks the
typed seams fails the suite like a change that breaks behaviour.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_package_type_checks_strictly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"mypy --strict found problems:\n{result.stdout}{result.stderr}"
