"""Warm starts: ``train.init_from=RUN_OR_EXPORT[:STEP]`` starts a new run's networks from another
run or an exported model (also how users fine-tune on their own photos).

G starts from the source's inference weights (its EMA when the source kept one, as every reader
of a run sees it), and so does the new run's EMA. D starts from the source run's D when that has
the same shapes (an export holds no D; a different discriminator config starts fresh, and the
run says so). The new run keeps its own optimiser states (fresh), step counter and data order.
A warm start happens only when the work dir has no checkpoint of its own: once it has one, the
run resumes from that. G's shapes must match the new config's; a mismatch fails naming it.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from jaxcolor import runs
from jaxcolor.runs import Step
from jaxcolor.training.state import EMAGANState, GANState

KEY = "train.init_from"


def parse_source(text: str) -> tuple[str, Step]:
    """``RUN_OR_EXPORT[:STEP]`` -> (path, step); STEP is a number, ``latest`` or ``best``
    (default: the run's newest checkpoint). ValueError naming the key when the path is neither
    a run folder nor an exported model."""
    from jaxcolor.artifacts import format as artifact

    path, step = text, None
    head, sep, tail = text.rpartition(":")
    if sep and head and (tail.isdigit() or tail in ("latest", "best")):
        path, step = head, runs.parse_step(tail)
    if artifact.is_export(path):
        if step is not None:
            raise ValueError(f"config key {KEY}={text!r} is invalid: {path} is an exported "
                             "model (one step); drop the :STEP")
    elif not runs.is_run(path):
        raise ValueError(f"config key {KEY}={text!r} is invalid: {path!r} is neither a run "
                         f"folder (no {runs.CONFIG_FILE}) nor an exported model")
    return path, step


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(p): tuple(np.shape(x))
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def mismatch(expected: Any, loaded: Any) -> str | None:
    """What differs between two variable trees (a missing, extra or reshaped array), or None."""
    want, have = _shapes(expected), _shapes(loaded)
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            return f"{name} is missing from the source"
        if name not in want:
            return f"the source has {name}, which this config's network lacks"
        if want[name] != have[name]:
            return f"{name} has shape {have[name]} in the source, {want[name]} here"
    return None


def load_source(path: str, step: Step, task: str) -> tuple[dict, dict | None, str]:
    """(G's inference variables, D's variables or None, a description) of a run or export."""
    from jaxcolor.artifacts import format as artifact
    from jaxcolor.inference.loading import restore_networks

    if artifact.is_export(path):
        metadata = artifact.read_metadata(path)
        source_task, g, d = metadata["task"], artifact.read_weights(path), None
        where = f"exported model {path} (step {metadata['step']})"
    else:
        config, chosen, g, d = restore_networks(path, step, discriminator=True)
        source_task, where = config.data.task, f"run {path} at step {chosen}"
    if source_task != task:
        raise ValueError(f"config key {KEY}: {where} was trained for data.task={source_task!r},"
                         f" this run is {task!r}")
    return g, d, where


def _place(tree: Any, like: Any, sharding: jax.sharding.Sharding) -> Any:
    """Host arrays of ``tree`` as global arrays laid out and typed like ``like``'s leaves."""
    def put(x, ref):
        x = np.asarray(x, dtype=ref.dtype)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, like)


def warm_start(state: GANState, config: ml_collections.ConfigDict,
               sharding: jax.sharding.Sharding) -> tuple[GANState, str]:
    """``state`` (fresh) with its networks from ``train.init_from``, and a line saying what was
    loaded. ValueError naming the key when G's shapes differ from the config's."""
    path, step = parse_source(config.train.init_from)
    g_vars, d_vars, where = load_source(path, step, config.data.task)
    g_like = {"params": state.g.params, "batch_stats": state.g.batch_stats}
    problem = mismatch(g_like, g_vars)
    if problem is not None:
        raise ValueError(f"config key {KEY}: the generator of {where} does not fit this "
                         f"config's model.generator={config.model.generator!r}: {problem}")
    g_vars = {k: g_vars.get(k, {}) for k in g_like}  # the state's tree (plain dicts)
    g = state.g.replace(params=_place(g_vars["params"], state.g.params, sharding),
                        batch_stats=_place(g_vars["batch_stats"], state.g.batch_stats, sharding))
    # Separate buffers: the step donates the state, and one buffer cannot be donated twice.
    ema = {"ema": _place(g_vars, state.ema, sharding)} if isinstance(state, EMAGANState) else {}
    d, d_note = state.d, "D starts fresh (an exported model holds no D)"
    if d_vars is not None:
        d_like = {"params": state.d.params, "batch_stats": state.d.batch_stats}
        problem = mismatch(d_like, d_vars)
        if problem is None:
            d = state.d.replace(params=_place(d_vars["params"], state.d.params, sharding),
                                batch_stats=_place(d_vars["batch_stats"], state.d.batch_stats,
                                                   sharding))
            d_note = "D too"
        else:
            d_note = f"D starts fresh (the source's D differs: {problem})"
    return state.replace(g=g, d=d, **ema), f"warm start: G from {where}; {d_note}"
