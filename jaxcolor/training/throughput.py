"""What a config's train step and G inference cost on these devices: compile time, step time,
images/s, the model's FLOPs (``jaxcolor.models.flops``, the native formulation: the same on every
backend), XLA's peak memory of the compiled programs, and the machine's measured peak GFLOP/s.

Each computation is compiled in a chosen formulation of the convolutions and transposed
convolutions (``jaxcolor.models.kernels``), so that formulations can be compared by measurement
(``compare``: alternating rounds). Data loading is not included. Used by
``python -m jaxcolor.benchmark`` and ``benchmarks/side_by_side.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor import config as config_lib
from jaxcolor import sharding
from jaxcolor.inference.loading import generator_apply
from jaxcolor.models import kernels
from jaxcolor.models.flops import model_flops
from jaxcolor.training.state import build_gan, fresh_state, param_count
from jaxcolor.training.step import check_names, make_train_step, step_jit_kwargs


@dataclasses.dataclass
class Timed:
    """A compiled computation ready to time: ``run(n)`` runs it n times and returns seconds."""

    run: Callable[[int], float]
    images: int  # images per call
    compile_s: float
    native_flops: Callable[[], float]  # per call, XLA cost analysis of the native formulation
    peak_bytes: int  # XLA memory analysis: arguments + outputs + temporaries - aliased
    info: dict


def _peak_bytes(compiled) -> int:
    mem = compiled.memory_analysis()
    if mem is None:
        return 0
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)


def _compile(fn: Callable, jit_kwargs: dict, args, impl: str | None,
             transpose: str | None = None):
    """(``jax.jit(fn, **jit_kwargs)`` compiled in the formulations ``impl`` and ``transpose``
    (None: the backend's choice), seconds to compile, a function giving the model's FLOPs:
    ``jaxcolor.models.flops`` of the native formulation, the same count on every backend)."""
    impl, transpose = impl or kernels.conv_impl(), transpose or kernels.transpose_impl()
    with kernels.use_impls(impl, transpose):
        start = time.perf_counter()
        # A new function: JAX caches traces per function, and a trace keeps its formulation.
        compiled = jax.jit(lambda *a: fn(*a), **jit_kwargs).lower(*args).compile()
        compile_s = time.perf_counter() - start
    # Shapes only: the arrays themselves may be donated by the time the FLOPs are asked for.
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)

    def native_flops() -> float:
        with kernels.use_impls("native", "native"):
            return model_flops(fn, *specs)

    return compiled, compile_s, native_flops


def random_batch(config, mesh) -> dict[str, jax.Array]:
    """A fixed batch of uniform [-1, 1] images, sharded over ``mesh``."""
    size, batch_size = config.data.image_size, config.train.batch_size
    rng = np.random.default_rng(0)
    return sharding.to_global(
        {k: rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
         for k in ("lab", "rgb")}, mesh)


def prepare(config, impl: str | None = None, transpose: str | None = None
            ) -> tuple[Timed, Timed]:
    """The compiled train step and G inference for ``config``, ready to time, with the
    convolution formulations ``impl`` and ``transpose`` (None: the backend's choice)."""
    mesh = sharding.make_mesh()
    config_lib.validate(config_lib.resolve(config), jax.device_count())
    check_names(config)
    gan = build_gan(config)
    size, batch_size = config.data.image_size, config.train.batch_size
    rep = sharding.replicated(mesh)
    state = fresh_state(gan, size, 0, rep)
    batch = random_batch(config, mesh)
    compiled, compile_s, flops = _compile(
        make_train_step(gan, config), step_jit_kwargs(mesh), (state, batch), impl, transpose)
    info = {"g_params": param_count(state.g.params), "d_params": param_count(state.d.params)}
    holder = {"state": state}

    def run_train(n: int) -> float:
        state = holder["state"]
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        holder["state"] = state
        return time.perf_counter() - start

    cond, _ = gan.task.split(batch)
    # The inference apply that colorize, evaluate, export and the server use.
    apply = generator_apply(gan.generator)

    def variables() -> dict:
        g = holder["state"].g
        return {"params": g.params, "batch_stats": g.batch_stats}

    p_compiled, p_compile_s, p_flops = _compile(apply, {}, (variables(), cond), impl, transpose)

    def run_predict(n: int) -> float:
        v = variables()
        start = time.perf_counter()
        for _ in range(n):
            out = p_compiled(v, cond)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    train = Timed(run_train, batch_size, compile_s, flops, _peak_bytes(compiled), info)
    infer = Timed(run_predict, batch_size, p_compile_s, p_flops, _peak_bytes(p_compiled), info)
    return train, infer


def measure_peak(dtype: str = "float32", seconds: float = 2.0) -> dict:
    """The machine's peak in ``dtype`` as measured: a large square matmul, and the best of a few
    large 3x3 convolutions (forward, native), at JAX's default precision (which on NVIDIA GPUs
    lets float32 use TF32). Returns GFLOP/s of each and ``peak``, the larger."""
    rng = np.random.default_rng(0)
    results: dict = {"dtype": dtype}

    def best_rate(fn, args, flops):
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
        best, spent = float("inf"), 0.0
        while spent < seconds or best == float("inf"):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
        return flops / best / 1e9

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)

    cpu = jax.default_backend() == "cpu"
    n = 2048 if cpu else 8192
    results["matmul"] = best_rate(jnp.matmul, (normal(n, n), normal(n, n)), 2.0 * n**3)
    conv_best = 0.0
    for batch, hw, c in ((8, 32, 256), (4, 64, 128), (1, 32, 512)):
        batch *= 1 if cpu else 16  # enough work to fill an accelerator
        x, w = normal(batch, hw, hw, c), normal(3, 3, c, c)
        flops = 2.0 * batch * hw * hw * 9 * c * c
        rate = best_rate(lambda x, w: kernels.conv2d(x, w, 1, ((1, 1), (1, 1)), "native"),
                         (x, w), flops)
        conv_best = max(conv_best, rate)
    results["conv"] = conv_best
    results["peak"] = max(results["matmul"], results["conv"])
    return results


def measure(train: Timed, infer: Timed, steps: int = 10, warmup: int = 2) -> dict[str, float]:
    """Compile time, mean step time, images/s, FLOPs and peak memory of the train step, and
    G inference images/s, of a ``prepare``d pair."""
    train.run(warmup)
    step_s = train.run(steps) / steps
    infer.run(max(warmup, 1))
    infer_s = infer.run(steps) / steps
    return {
        **train.info,
        "compile_s": train.compile_s,
        "step_s": step_s,
        "images_per_s": train.images / step_s,
        "step_gflops": train.native_flops() / 1e9,
        "peak_bytes": train.peak_bytes,
        "infer_images_per_s": infer.images / infer_s,
        "infer_gflops": infer.native_flops() / 1e9,
    }


def override(config, image_size: int | None, batch_size: int | None,
             num_downs: int | None = None, compute_dtype: str | None = None):
    """The benchmark's command-line overrides applied to ``config`` (returns it)."""
    if image_size:
        config.data.image_size = image_size
        if config.model.generator == "unet":
            config.model.num_downs = num_downs  # None: the deepest the size allows (resolve)
    if batch_size:
        config.train.batch_size = batch_size
    if compute_dtype:
        config.train.compute_dtype = compute_dtype
    return config


def compare(prepared: dict[tuple[str, str], tuple[Timed, Timed]], name: str, steps: int,
            warmup: int, rounds: int) -> None:
    """Times the train step and G inference of each (conv, transposed conv) formulation,
    alternating rounds; prints each round and the totals."""
    for train, infer in prepared.values():
        train.run(warmup)
        infer.run(max(warmup, 1))
    totals = {v: [0.0, 0.0] for v in prepared}
    for r in range(rounds):
        for v, pair in prepared.items():
            seconds = [timed.run(steps) for timed in pair]
            totals[v] = [t + s for t, s in zip(totals[v], seconds, strict=True)]
            print(f"{name}: round {r} {v[0]} convs, {v[1]} transposed: train "
                  f"{steps * pair[0].images / seconds[0]:.2f} images/s, G inference "
                  f"{steps * pair[1].images / seconds[1]:.2f} images/s")
    for v, (train_s, infer_s) in totals.items():
        train, _ = prepared[v]
        print(f"{name}: {v[0]} convs, {v[1]} transposed: train "
              f"{rounds * steps * train.images / train_s:.2f} images/s, G inference "
              f"{rounds * steps * train.images / infer_s:.2f} images/s")

