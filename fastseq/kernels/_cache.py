"""One stamp over every kernel source for numba's on-disk cache.

numba keys a cached function by the time stamp of its own file only, while
a kernel carries the code of every function it calls from other files,
compiled in (each time loop carries :func:`fastseq.kernels.matmul.packed_matmul`).
After an edit of ``matmul.py`` alone (a ``git pull`` into an editable
install, a developer's change) the time loops would keep loading the old
product from the cache.  :func:`drop_stale_cache` keeps a digest of all the
kernel sources (and :mod:`fastseq._config`, whose constants they compile
in) beside the cache files and removes the cache files when it changes, so
that everything compiles afresh once.  It reads about fifteen small files at
import and compiles nothing.
"""

import glob
import hashlib
import os

STAMP = "fastseq-kernels.stamp"


def sources_digest(folder):
    """SHA-1 of the kernel sources in ``folder`` and of ``_config.py``."""
    h = hashlib.sha1()
    files = sorted(glob.glob(os.path.join(folder, "*.py")))
    files.append(os.path.join(os.path.dirname(folder), "_config.py"))
    for path in files:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def cache_folder(folder):
    """Where numba keeps the cache files of the functions defined in
    ``folder`` (``NUMBA_CACHE_DIR``, the in-tree ``__pycache__`` or the user's
    cache, as numba chooses), or None when numba's locators cannot say."""
    try:
        from numba.core.caching import CacheImpl
    except ImportError:  # another numba: leave its cache alone
        return None
    py_file = os.path.join(folder, "__init__.py")
    for cls in CacheImpl._locator_classes:
        try:
            loc = cls.from_function(sources_digest, py_file)
        except Exception:  # a locator that does not apply here
            continue
        if loc is not None:
            return loc.get_cache_path()
    return None


def drop_stale_cache(folder):
    """Remove numba's cache files of the kernels in ``folder`` when their
    sources changed since the stamp was written; write the stamp.  Every
    failure (a read-only install, a race with another process) is ignored:
    at worst numba loads what it would have loaded without this."""
    try:
        cache = cache_folder(folder)
        if cache is None:
            return
        digest = sources_digest(folder)
        stamp = os.path.join(cache, STAMP)
        try:
            with open(stamp) as f:
                if f.read().strip() == digest:
                    return
        except OSError:
            pass
        for path in glob.glob(os.path.join(cache, "*.nbi")) + glob.glob(os.path.join(cache, "*.nbc")):
            try:
                os.remove(path)
            except OSError:
                pass
        os.makedirs(cache, exist_ok=True)
        tmp = f"{stamp}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(digest)
        os.replace(tmp, stamp)
    except Exception:  # never let cache housekeeping break an import
        pass
