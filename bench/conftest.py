"""pytest-benchmark suite of fastseq (run explicitly: ``pytest bench/``).

Not collected by the normal test run (``testpaths = ["tests"]``).  Timings are
recorded, never asserted.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
