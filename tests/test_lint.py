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


def test_no_kernel_closes_over_a_compiled_function():
    """numba's cache keys a function by the pickled values of its closure,
    and a pickled dispatcher carries a new id in every process: a kernel
    that closes over one misses the cache, and compiles again, in every
    process (``tall_matmul`` did, 0.8 s and 36 MB at the first training
    step). No compiled function of the package holds one in a cell."""
    import importlib
    from numba.core.registry import CPUDispatcher
    for path in sorted((ROOT / "fastseq").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        module = importlib.import_module(name.removesuffix(".__init__"))
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher):
                for cell in value.py_func.__closure__ or ():
                    assert not isinstance(cell.cell_contents, CPUDispatcher), f"{name}.{attr}"


def test_tall_products_load_from_the_cache(tmp_path):
    """Both forms of the weight-gradient kernel compile once into a fresh
    cache and are loaded from it by the next process."""
    code = ("import numpy as np\n"
            "from fastseq.kernels.matmul import tall_matmul, tall_matmul_t\n"
            "x, g = np.ones((40, 3), np.float32), np.ones((40, 32), np.float32)\n"
            "out = np.empty((3, 32), np.float32)\n"
            "tall_matmul(x, g, out, 0, 3, 0, 2, True)\n"
            "tall_matmul_t(np.ascontiguousarray(x.T), g, out, 0, 3, 0, 2, True)\n"
            "assert (out == 40).all()\n"
            "print(sum(f.stats.cache_hits.total() for f in (tall_matmul, tall_matmul_t)),\n"
            "      sum(f.stats.cache_misses.total() for f in (tall_matmul, tall_matmul_t)))\n")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-2000:]
    assert runs[0].stdout.split() == ["0", "2"] and runs[1].stdout.split() == ["2", "0"], \
        [r.stdout for r in runs]
