"""The one way the command-line tools start: absl flags, also under their console-script names.

``python -m jaxcolor.<name>`` and the ``jaxcolor-<name>`` console commands both call
``run_app``. absl's ``--help`` lists the flags of the main module, which for a console script is
the launcher, not the module that defined them; ``run_app`` declares them for it, and makes
``--help`` (which absl ends with status 1) exit 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any


def run_app(main: Callable[[Sequence[str]], Any], define_flags: Callable[[], None]) -> None:
    """Defines the tool's flags, then ``absl.app.run(main)``."""
    from absl import app, flags

    before = set(flags.FLAGS)
    define_flags()
    for name in sorted(set(flags.FLAGS) - before):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    try:
        app.run(main)
    except SystemExit as e:
        if e.code == 1 and any(a in ("--help", "-h", "-?", "--helpshort") for a in sys.argv[1:]):
            raise SystemExit(0) from None
        raise
