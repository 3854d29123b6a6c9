"""jaxcolor: GANs that colorize grayscale photos, in JAX/Flax."""


def __getattr__(name: str):
    # TEMPORARY (serve branch): falls back to the shim of the issue-8 API until the real
    # ``jaxcolor.load`` exists. The integrator removes this function and _api_shim.py at merge.
    if name == "load":
        from jaxcolor._api_shim import load

        return load
    raise AttributeError(f"module 'jaxcolor' has no attribute {name!r}")
