"""The train state pytree (both networks, their optimisers, step, RNG) and how to build it.

The state holds only arrays, so it can be donated to the jitted step, sharded and checkpointed
as is; the modules and optax transforms that give the arrays meaning live in ``GAN``.

With ``model.ema_decay`` > 0 the state is an ``EMAGANState``, which also holds ``ema``: an
exponential moving average of G's parameters and BatchNorm statistics (StyleGAN2-ADA, BigGAN),
what validation and every reader of the run use (``inference_tree``). With it off (the default)
the state is a ``GANState``, whose tree is that of earlier versions, so their checkpoints
restore unchanged (Orbax refuses a target with a field the checkpoint lacks, even a None).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxcolor import models
from jaxcolor.config import check_choice
from jaxcolor.tasks import Task, get_task
from jaxcolor.training import encoder as encoder_lib
from jaxcolor.training.diffaugment import parse_policy

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """The dtype ``train.compute_dtype`` names; a clear error names the key otherwise."""
    check_choice("train.compute_dtype", name, COMPUTE_DTYPES)
    return COMPUTE_DTYPES[name]


@flax.struct.dataclass
class NetState:
    """One network: its parameters, BatchNorm running statistics and optimiser state."""

    params: Any
    batch_stats: Any
    opt_state: Any


@flax.struct.dataclass
class GANState:
    """Everything a train step reads and writes."""

    step: jax.Array
    g: NetState
    d: NetState
    rng: jax.Array  # base key; each step folds in its step number


@flax.struct.dataclass
class EMAGANState(GANState):
    """A ``GANState`` with G's weight EMA (``model.ema_decay`` > 0)."""

    ema: Any  # {"params", "batch_stats"}


@dataclasses.dataclass(frozen=True)
class GAN:
    """The static half of training: modules, optimisers and the task. Built from a config."""

    task: Task
    generator: nn.Module
    discriminator: nn.Module
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    g_schedule: optax.Schedule
    d_schedule: optax.Schedule
    ema_decay: float = 0.0  # model.ema_decay; 0: no EMA in the state
    diffaugment: tuple[str, ...] = ()  # loss.diffaugment, parsed (see training.diffaugment)
    # A pretrained encoder in G (its params subtree) and the steps it stays frozen for
    # (``jaxcolor.training.encoder``); None: G trains as one.
    encoder: str | None = None
    encoder_frozen_steps: int = 0


def lr_schedule(base_lr: float, num_steps: int, decay_start: float) -> optax.Schedule:
    """Constant ``base_lr`` until ``decay_start * num_steps``, then linear decay to 0 at the end."""
    start = int(round(decay_start * num_steps))
    if start >= num_steps:
        return optax.constant_schedule(base_lr)
    return optax.join_schedules(
        [optax.constant_schedule(base_lr), optax.linear_schedule(base_lr, 0.0, num_steps - start)],
        [start],
    )


def decay_mask(params: Any) -> Any:
    """Which parameters weight decay shrinks: kernels (2-D and up), not biases or norm scales."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def _adam(schedule: optax.Schedule, updates_per_step: int, cfg) -> optax.GradientTransformation:
    # Adam counts updates; several updates per train step must not make the schedule run faster.
    lr = lambda count: schedule(count // updates_per_step)  # noqa: E731
    if cfg.get("weight_decay", 0.0) > 0:  # AdamW (decoupled decay, scaled by the rate)
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                           mask=decay_mask)
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2)  # the optimiser state of earlier versions


def advance_schedule(opt_state: Any, updates: int) -> Any:
    """``opt_state`` with only its learning-rate schedule's count moved on by ``updates``: a
    network frozen for a training phase keeps its Adam moments and bias correction, and its
    rate stays that of the train step (what ``g_lr``/``d_lr`` report) when it trains again."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    return jax.tree.map(lambda x: x._replace(count=x.count + updates) if is_schedule(x) else x,
                        opt_state, is_leaf=is_schedule)


def ema_update(ema: Any, g: NetState, decay: float, step: jax.Array) -> Any:
    """G's weight EMA after the update of train step ``step``: params and BatchNorm statistics
    move towards G's by 1 - d, with d = min(decay, (1 + step) / (10 + step)), so that early
    averages are not dominated by the initial weights (TensorFlow's num_updates warm-up)."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return optax.incremental_update({"params": g.params, "batch_stats": g.batch_stats}, ema,
                                    1.0 - d)


def inference_tree(state: Any) -> dict[str, Any]:
    """The part of a state (or abstract state) that is G for inference, keyed as the checkpoint
    stores it: ``{"ema": {"params", "batch_stats"}}`` when the run keeps G's weight EMA, else
    ``{"g": {"params", "batch_stats"}}``. Restoring only this tree reads only those arrays;
    ``inference_variables`` takes the generator's variables out of it."""
    if isinstance(state, EMAGANState):
        return {"ema": {"params": state.ema["params"], "batch_stats": state.ema["batch_stats"]}}
    return {"g": {"params": state.g.params, "batch_stats": state.g.batch_stats}}


def inference_variables(tree: dict[str, Any]) -> dict[str, Any]:
    """G's ``{"params", "batch_stats"}`` from an ``inference_tree`` (or its restored copy)."""
    (part,) = tree.values()
    return {"params": part["params"], "batch_stats": part["batch_stats"]}


def build_gan(config: ml_collections.ConfigDict) -> GAN:
    """Modules, optimisers and schedules named by the config."""
    task = get_task(config.data.task)
    dtype = compute_dtype(config.train.compute_dtype)
    opt, steps = config.optim, config.train.num_steps
    g_schedule = lr_schedule(opt.g_lr, steps, opt.decay_start)
    d_schedule = lr_schedule(opt.d_lr, steps, opt.decay_start)
    encoder = models.encoder_name(config.model)
    frozen = config.train.encoder_frozen_steps if encoder else 0
    g_tx = _adam(g_schedule, opt.g_updates, opt)
    if encoder:
        g_tx = encoder_lib.generator_tx(lambda s: _adam(s, opt.g_updates, opt), g_schedule,
                                        encoder, frozen, opt.encoder_lr_scale, opt.g_updates)
    return GAN(
        task=task,
        generator=models.build_generator(config.model, task, dtype),
        discriminator=models.build_discriminator(config.model, task, dtype),
        g_tx=g_tx,
        d_tx=_adam(d_schedule, opt.d_updates, opt),
        g_schedule=g_schedule,
        d_schedule=d_schedule,
        ema_decay=float(config.model.get("ema_decay", 0.0)),
        diffaugment=parse_policy(config.loss.get("diffaugment", "")),
        encoder=encoder,
        encoder_frozen_steps=frozen,
    )


def init_state(gan: GAN, rng: jax.Array, image_size: int,
               pretrained: dict | None = None) -> GANState:
    """Fresh parameters (pix2pix initialisation) and optimiser states for both networks;
    ``pretrained`` (``models.pretrained_variables``) replaces G's encoder variables."""
    g_key, d_key, drop_key, state_key = jax.random.split(rng, 4)
    cond = jnp.zeros((1, image_size, image_size, gan.task.cond_channels), jnp.float32)
    target = jnp.zeros((1, image_size, image_size, gan.task.target_channels), jnp.float32)
    g_vars = gan.generator.init({"params": g_key, "dropout": drop_key}, cond, train=False)
    g_vars = encoder_lib.with_pretrained(g_vars, pretrained)
    d_vars = gan.discriminator.init(d_key, cond, target, train=False)

    def net(variables, tx):
        params = variables["params"]
        return NetState(params, variables.get("batch_stats", {}), tx.init(params))

    g = net(g_vars, gan.g_tx)
    state = GANState(step=jnp.zeros((), jnp.int32), g=g, d=net(d_vars, gan.d_tx), rng=state_key)
    if gan.ema_decay > 0:
        ema = {"params": g.params, "batch_stats": g.batch_stats}
        return EMAGANState(**vars(state), ema=ema)
    return state


def fresh_state(gan: GAN, image_size: int, seed: int, sharding: Any = None,
                pretrained: dict | None = None) -> GANState:
    """``init_state`` as one compiled program, its output placed with ``sharding``.

    On CPU the program is compiled without LLVM's optimisations: it runs once per run, and
    optimising the random-number code of every parameter took longer (~12 s for the LAB GAN)
    than running it unoptimised. The values are the same draws up to float rounding of the
    normal distribution's transform."""
    init = jax.jit(lambda key, over: init_state(gan, key, image_size, over),
                   out_shardings=sharding, compiler_options=run_once_options())
    return init(jax.random.PRNGKey(seed), pretrained)


def abstract_state(gan: GAN, image_size: int, sharding: Any = None) -> GANState:
    """``init_state``'s shapes and dtypes (``jax.ShapeDtypeStruct`` leaves, with ``sharding``),
    traced without compiling: the restore target of the readers of a run (colorize, evaluate,
    export, the server), which need no initial weights. The trainer restores into its fresh
    state instead (see ``train.train``)."""
    shapes = jax.eval_shape(lambda key: init_state(gan, key, image_size), jax.random.PRNGKey(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)


def run_once_options() -> dict[str, Any] | None:
    """XLA compiler options for programs that run once per run or per checkpoint (the init, the
    finiteness check before a save): on CPU, no LLVM optimisation, which costs more compile
    time than it saves; elsewhere the defaults. Call after the backend is chosen (not at
    import: ``jax.distributed`` must start first)."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


def param_count(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return sum(x.size for x in jax.tree.leaves(params))
