"""A web page and an HTTP service that colorize photos (the ``[serve]`` extra).

``python -m jaxcolor.serve --model PATH`` (``cli``) serves ``app.create_app(model, limits)``
with uvicorn; ``batching.Batcher`` puts concurrent requests onto the device in batches; the page
is static HTML/JS in ``static/``.
"""


def run() -> None:
    """The ``jaxcolor-serve`` console script (``python -m jaxcolor.serve``)."""
    from jaxcolor.serve.cli import run as _run

    _run()
