"""The documentation: the site builds with no warning, and every example in a
docstring runs (doctests)."""

import doctest
import importlib
import pathlib
import pkgutil
import subprocess
import sys

import pytest

import fastseq

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules():
    names = ["fastseq"]
    for info in pkgutil.walk_packages(fastseq.__path__, "fastseq."):
        names.append(info.name)
    return sorted(names)


def _with_examples():
    out = []
    finder = doctest.DocTestFinder()
    for name in _modules():
        module = importlib.import_module(name)
        if any(t.examples for t in finder.find(module, name)):
            out.append(name)
    return out


def test_some_docstrings_have_examples():
    """Guards the doctest below against collecting nothing."""
    assert {"fastseq.estimators.classifier", "fastseq.network.recurrent",
            "fastseq.interop", "fastseq.persistence"} <= set(_with_examples())


@pytest.mark.parametrize("name", _with_examples())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS
                                      | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert tried > 0
    assert failures == 0, f"{failures} of {tried} doctest examples of {name} failed (see output)"


def test_site_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                          "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True,
                         env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_readme_links_stay_inside_the_repository():
    import re
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert not target.startswith(("http:", "https:", "/", "..")), target
        assert (ROOT / target.split("#")[0]).exists(), target
