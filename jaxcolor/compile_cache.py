"""JAX's persistent compilation cache for every command (train, evaluate, colorize, serve), so
that a second run with the same model and shapes loads its compiled programs instead of
recompiling them.

The cache lives in ``$JAXCOLOR_COMPILATION_CACHE`` (default ``~/.cache/jaxcolor/xla``); set that
variable to ``off`` to disable it. Programs that compiled in under 0.2 s are not stored, unless
JAX's ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` sets another threshold. Entries are keyed
by the program, the JAX/XLA versions and the devices, so a stale entry is never used; deleting
the folder is always safe.
"""

from __future__ import annotations

import os

import jax

ENV = "JAXCOLOR_COMPILATION_CACHE"
MIN_SECS_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"  # JAX's variable; default here 0.2
DEFAULT_DIR = os.path.join("~", ".cache", "jaxcolor", "xla")


def enable(cache_dir: str | None = None) -> str | None:
    """Turns the cache on (before the first compile) and returns its folder, or None when
    ``$JAXCOLOR_COMPILATION_CACHE`` is ``off``."""
    cache_dir = cache_dir or os.environ.get(ENV) or DEFAULT_DIR
    if cache_dir.lower() in ("off", "0", "none", "false"):
        return None
    cache_dir = os.path.expanduser(cache_dir)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Cache every program that took noticeable time to compile, whatever its size, unless JAX's
    # own variable says otherwise.
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get(MIN_SECS_ENV, 0.2)))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir
