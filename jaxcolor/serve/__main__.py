"""``python -m jaxcolor.serve``: see ``jaxcolor.serve.cli``."""

from jaxcolor.serve import run

if __name__ == "__main__":
    run()
