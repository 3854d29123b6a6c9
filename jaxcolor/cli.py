"""The one start-up of every command-line tool: absl flags, logging, JAX's persistent compilation
cache, and a command's expected errors as one line.

``python -m jaxcolor.<name>`` and the ``jaxcolor-<name>`` console commands both call ``run_app``.
absl's ``--help`` lists the flags of the main module, which for a console script is the launcher,
not the module that defined them; ``run_app`` declares them for it, and makes ``--help`` (which
absl ends with status 1) exit 0.

The compilation cache lets a second run with the same model and shapes load its compiled
programs instead of recompiling them. It lives in ``$JAXCOLOR_COMPILATION_CACHE`` (default
``~/.cache/jaxcolor/xla``); set that variable to ``off`` to disable it. Programs that compiled in
under 0.2 s are not stored, unless JAX's ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` sets
another threshold. Entries are keyed by the program, the JAX/XLA versions and the devices, so a
stale entry is never used; deleting the folder is always safe.

Importing this module costs nothing beyond the standard library: absl, ml_collections and JAX
are imported when a command starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

COMPILE_CACHE_ENV = "JAXCOLOR_COMPILATION_CACHE"
# JAX's own variable; our default is 0.2 s.
MIN_COMPILE_SECS_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
DEFAULT_COMPILE_CACHE = os.path.join("~", ".cache", "jaxcolor", "xla")
_HELP = ("--help", "-h", "-?", "--helpshort")


def enable_compile_cache(cache_dir: str | None = None) -> str | None:
    """Turns the persistent compilation cache on (before the first compile) and returns its
    folder, or None when ``$JAXCOLOR_COMPILATION_CACHE`` is ``off``."""
    cache_dir = cache_dir or os.environ.get(COMPILE_CACHE_ENV) or DEFAULT_COMPILE_CACHE
    if cache_dir.lower() in ("off", "0", "none", "false"):
        return None
    import jax

    cache_dir = os.path.expanduser(cache_dir)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Cache every program that took noticeable time to compile, whatever its size, unless JAX's
    # own variable says otherwise.
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get(MIN_COMPILE_SECS_ENV, 0.2)))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


def define_config_flag() -> None:
    """The required ``--config FILE[:arg]`` flag (an experiment file; ``config.load_file`` loads
    the same way) with its ``--config.a.b=v`` overrides of existing keys."""
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Experiment file (get_config()); file.py:quick passes 'quick'. "
        "--config.a.b=v overrides a key.", lock_config=True)
    flags.mark_flags_as_required(["config"])


def run_app(main: Callable[[Sequence[str]], Any], define_flags: Callable[[], None], *,
            errors: tuple[type[BaseException], ...] = (OSError, ValueError),
            error_status: int = 1, compile_cache: bool = True) -> None:
    """Defines the command's flags, then runs ``main(argv)`` with ``absl.app.run``, after the
    start-up every command shares:

    * absl logging at WARNING unless ``--verbosity`` is given (Orbax logs every file it touches);
    * the persistent compilation cache (``enable_compile_cache``), unless ``compile_cache`` is
      False: for commands that time compiles, or that must decide later (the trainer);
    * an exception of a type in ``errors`` ends the command with ``error: <message>`` on stderr
      and exit status ``error_status``; any other keeps its traceback.

    ``main``'s return value is the exit status (None: 0), as in absl.
    """
    from absl import app, flags
    from absl import logging as absl_logging

    before = set(flags.FLAGS)
    define_flags()
    for name in sorted(set(flags.FLAGS) - before):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    absl_logging.set_verbosity(absl_logging.WARNING)  # before parsing: --verbosity overrides

    def start(argv: Sequence[str]) -> Any:
        if compile_cache:
            enable_compile_cache()
        try:
            return main(argv)
        except errors as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(error_status)

    try:
        app.run(start)
    except SystemExit as e:
        if e.code == 1 and any(a in _HELP for a in sys.argv[1:]):
            raise SystemExit(0) from None
        raise
