"""The linter (ruff: pyflakes, pycodestyle, pep257 docstrings, import order) stays green."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or [sys.executable, "-m", "ruff"]
    command = ([ruff] if isinstance(ruff, str) else ruff) + [
        "check", "--no-cache", "--output-format", "concise", str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
