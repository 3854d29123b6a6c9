"""Training a generator around a pretrained encoder: its initial weights, its optimiser (frozen,
then fine-tuned at a fraction of the learning rate) and the frozen phase's cheaper gradient.

The encoder is the generator's top-level parameter subtree named by ``models.encoder_name``.

* Weights: ``with_pretrained`` puts the pretrained ``params``/``batch_stats`` over the freshly
  initialised ones (the trainer's ``fresh_state``); a resumed run restores its checkpoint instead.
* Optimiser (``generator_tx``): ``optax.multi_transform`` over the labels "encoder" and "rest".
  The rest gets the generator's usual optimiser. The encoder gets the same optimiser with its
  learning rate times ``optim.encoder_lr_scale``, inside ``optax.transforms.conditionally_mask``:
  for the first ``train.encoder_frozen_steps`` steps its updates are zero and its Adam state
  (moments and count) is left as initialised, so on unfreezing Adam starts afresh (bias
  correction included) instead of from moments that saw no gradient.
* Gradient (``frozen_vjp``): during the frozen steps the train step differentiates only the
  other parameters, so no backward pass runs through the encoder (on a 2-core CPU at 128 px the
  generator's gradient took a third of the time; BUILD.md). Its gradient is reported as zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

ENCODER_LABEL, REST_LABEL = "encoder", "rest"


def generator_tx(make_tx: Callable[[optax.Schedule], optax.GradientTransformation],
                 schedule: optax.Schedule, encoder: str, frozen_steps: int, lr_scale: float,
                 updates_per_step: int) -> optax.GradientTransformation:
    """The generator's optimiser with a frozen-then-fine-tuned encoder (see the module doc).

    ``make_tx(schedule)`` builds the usual optimiser from a per-step learning-rate schedule;
    the encoder's schedule is ``lr_scale * schedule(step)`` from step ``frozen_steps`` on."""
    frozen_updates = frozen_steps * updates_per_step

    def encoder_schedule(step):
        # The masked transform's own count starts at 0 when the encoder unfreezes.
        return lr_scale * schedule(step + frozen_steps)

    encoder_tx = optax.transforms.conditionally_mask(
        make_tx(encoder_schedule), lambda count: count >= frozen_updates)
    return optax.multi_transform(
        {ENCODER_LABEL: encoder_tx, REST_LABEL: make_tx(schedule)},
        lambda params: {k: ENCODER_LABEL if k == encoder else REST_LABEL for k in params},
    )


def frozen_vjp(fn: Callable[[Any], Any], params: dict, encoder: str):
    """``jax.vjp(fn, params, has_aux=True)`` with the encoder's parameters held constant: no
    backward pass runs through it, and the pullback gives zeros for it."""
    fixed = params[encoder]
    rest = {k: v for k, v in params.items() if k != encoder}
    out, pullback, aux = jax.vjp(lambda r: fn({**r, encoder: fixed}), rest, has_aux=True)

    def full_pullback(cotangent):
        (grads,) = pullback(cotangent)
        return ({**grads, encoder: jax.tree.map(jnp.zeros_like, fixed)},)

    return out, full_pullback, aux


def with_pretrained(variables: dict, pretrained: dict | None) -> dict:
    """``variables`` ({"params", "batch_stats"}) with every leaf of ``pretrained`` (the same
    nesting, a subset of the leaves) put in its place; ValueError names a leaf that has no place
    or another shape."""
    if not pretrained:
        return variables

    def put(tree, over, path):
        if not isinstance(over, dict):
            if isinstance(tree, dict) or jnp.shape(tree) != jnp.shape(over):
                raise ValueError(f"pretrained weights: {'/'.join(path)} has shape "
                                 f"{jnp.shape(over)}, the generator {jnp.shape(tree)}")
            return jnp.asarray(over, jnp.result_type(tree))
        if not isinstance(tree, dict):
            raise ValueError(f"pretrained weights: {'/'.join(path)} is not a subtree")
        missing = sorted(set(over) - set(tree))
        if missing:
            raise ValueError(f"pretrained weights: {'/'.join([*path, missing[0]])} is not in "
                             "the generator")
        return {k: put(v, over[k], (*path, k)) if k in over else v for k, v in tree.items()}

    return put(dict(variables), pretrained, ())
