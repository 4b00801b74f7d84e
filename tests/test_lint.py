"""Project rules that code review alone would miss."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNELS = ROOT / "fastseq" / "kernels"


def test_every_kernel_takes_its_flags_from_config():
    """No hard-coded numba flags in kernels: every @njit spreads _config.JIT,
    and nothing anywhere asks for fastmath=True (it folds away NaN checks)."""
    for path in sorted(KERNELS.glob("*.py")):
        src = path.read_text()
        for m in re.finditer(r"@(?:numba\.)?n?jit\(([^)]*)\)", src):
            assert "**JIT" in m.group(1), f"{path.name}: @njit({m.group(1)}) must use **JIT"
        assert not re.search(r"@(?:numba\.)?n?jit\s*$", src, re.M), f"{path.name}: bare @njit"
    for path in (ROOT / "fastseq").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "fastmath":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path


def test_kernels_import_nothing_of_fastseq_but_config():
    for path in sorted(KERNELS.glob("*.py")):
        for line in path.read_text().splitlines():
            if re.match(r"\s*from \.\.(\w+)", line):
                assert re.match(r"\s*from \.\._config import", line), f"{path.name}: {line.strip()}"
            assert "import fastseq" not in line, f"{path.name}: {line.strip()}"


@pytest.mark.skipif(os.environ.get("NUMBA_BOUNDSCHECK") == "1", reason="already bounds-checked")
def test_kernels_stay_in_bounds(tmp_path):
    """Re-run the kernel and layer tests with numba's bounds checking switched
    on (and a private compile cache): an out-of-bounds index raises there."""
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/test_kernels.py", "tests/test_recurrent.py", "-k", "not import_compiles"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
