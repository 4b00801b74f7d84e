"""Load a script of ``examples/`` as a module (its ``main`` is guarded, so
this defines its functions only): the benchmarks and the tests reuse the
examples' data loaders and models instead of copying them."""

import importlib.util
import os

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load_example(name):
    """``examples/<name>.py`` as a fresh module object."""
    spec = importlib.util.spec_from_file_location(f"_fastseq_example_{name}",
                                                  os.path.join(EXAMPLES, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
