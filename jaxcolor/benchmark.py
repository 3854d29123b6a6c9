"""Train-step and inference throughput: ``python -m jaxcolor.benchmark --config experiments/X.py``.

Times the jitted train step (compile, then ``--steps`` steps on a fixed device batch, after
``--warmup`` steps) on all local devices and prints images/s. Before that last line it prints
G inference images/s, XLA's memory analysis of the compiled step, and achieved GFLOP/s against
the machine's measured peak (``--peak``). FLOPs are XLA's cost analysis of the step compiled
with the native convolutions (the model's arithmetic; reformulations such as space-to-depth do
not count their zero taps). Data loading is not included; the trainer logs the fraction of time
it waits for data (``perf/data_wait_fraction``).

``--kernels native|fast`` picks the convolution formulation (``jaxcolor.models.kernels``);
``--kernels both`` times both, alternating, to choose per backend by measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcolor import config as config_lib
from jaxcolor import sharding
from jaxcolor.inference import generator_apply
from jaxcolor.models import kernels
from jaxcolor.train_state import build_gan, fresh_state, param_count
from jaxcolor.train_step import make_train_step


def load_config(path: str):
    """``get_config`` of an experiment file; ``file.py:preset`` passes the preset."""
    path, _, preset = path.partition(":")
    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset or None)


@dataclasses.dataclass
class Timed:
    """A compiled computation ready to time: ``run(n)`` runs it n times and returns seconds."""

    run: Callable[[int], float]
    images: int  # images per call
    compile_s: float
    native_flops: Callable[[], float]  # per call, XLA cost analysis of the native formulation
    peak_bytes: int  # XLA memory analysis: arguments + outputs + temporaries - aliased
    info: dict


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _peak_bytes(compiled) -> int:
    mem = compiled.memory_analysis()
    if mem is None:
        return 0
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               - mem.alias_size_in_bytes)


def _compile(fn, args, impl: str | None):
    """(compiled in ``impl``, seconds to compile, a function giving the FLOPs of the native
    formulation: compiling that again costs time, so only when asked)."""
    with kernels.use_conv_impl(impl or kernels.conv_impl()):
        start = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - start
    # Shapes only: the arrays themselves may be donated by the time the FLOPs are asked for.
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                         args)

    def native_flops() -> float:
        if (impl or kernels.conv_impl()) == "native":
            return _flops(compiled)
        with kernels.use_conv_impl("native"):
            return _flops(fn.lower(*specs).compile())

    return compiled, compile_s, native_flops


def random_batch(config, mesh) -> dict[str, jax.Array]:
    """A fixed batch of uniform [-1, 1] images, sharded over ``mesh``."""
    size, batch_size = config.data.image_size, config.train.batch_size
    rng = np.random.default_rng(0)
    return sharding.to_global(
        {k: rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
         for k in ("lab", "rgb")}, mesh)


def prepare(config, impl: str | None = None) -> tuple[Timed, Timed]:
    """The compiled train step and G inference for ``config``, ready to time."""
    mesh = sharding.make_mesh()
    config_lib.validate(config_lib.resolve(config), jax.device_count())
    gan = build_gan(config)
    size, batch_size = config.data.image_size, config.train.batch_size
    rep = sharding.replicated(mesh)
    state = fresh_state(gan, size, 0, rep)
    batch = random_batch(config, mesh)
    step = jax.jit(make_train_step(gan, config), in_shardings=(rep, sharding.batch_sharded(mesh)),
                   out_shardings=(rep, rep), donate_argnums=0)
    compiled, compile_s, flops = _compile(step, (state, batch), impl)
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
    predict = jax.jit(generator_apply(gan.generator))

    def variables() -> dict:
        g = holder["state"].g
        return {"params": g.params, "batch_stats": g.batch_stats}

    p_compiled, p_compile_s, p_flops = _compile(predict, (variables(), cond), impl)

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


def measure_peak(seconds: float = 2.0) -> dict[str, float]:
    """The machine's float32 peak as measured: a 4096^3 matmul, and the best of a few large
    convolutions (forward, native). Returns GFLOP/s of each; ``peak`` is the larger."""
    rng = np.random.default_rng(0)
    results = {}

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

    n = 4096 if jax.default_backend() != "cpu" else 2048
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    results["matmul"] = best_rate(jnp.matmul, (a, a), 2.0 * n**3)
    conv_best = 0.0
    for batch, hw, c in ((8, 32, 256), (4, 64, 128), (1, 32, 512)):
        x = jnp.asarray(rng.standard_normal((batch, hw, hw, c), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, c, c), np.float32))
        flops = 2.0 * batch * hw * hw * 9 * c * c
        rate = best_rate(lambda x, w: kernels.conv2d(x, w, 1, ((1, 1), (1, 1)), "native"),
                         (x, w), flops)
        conv_best = max(conv_best, rate)
    results["conv"] = conv_best
    results["peak"] = max(results["matmul"], results["conv"])
    return results


def benchmark(config, steps: int = 10, warmup: int = 2, impl: str | None = None
              ) -> dict[str, float]:
    """Compile time, mean step time, images/s, FLOPs and peak memory of the train step, and
    G inference images/s, for ``config``."""
    train, infer = prepare(config, impl)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment file[:preset]")
    parser.add_argument("--image_size", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--num_downs", type=int, help="U-Net depth (default: deepest for size)")
    parser.add_argument("--compute_dtype", choices=sorted(config_lib.COMPUTE_DTYPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--kernels", choices=(*kernels.IMPLS, "both"),
                        help="convolution formulation (default: the backend's choice)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds for 'both'")
    parser.add_argument("--peak", action="store_true",
                        help="measure the peak GFLOP/s and print achieved/peak")
    args = parser.parse_args()
    config = override(load_config(args.config), args.image_size, args.batch_size,
                      args.num_downs, args.compute_dtype)
    devices = jax.devices()
    name = (f"{config.experiment} {config.data.image_size}px batch {config.train.batch_size} "
            f"{config.train.compute_dtype} on {len(devices)} x {devices[0].device_kind}")
    if args.kernels == "both":
        compare_impls(config, name, args.steps, args.warmup, args.rounds)
    impl = None if args.kernels == "both" else args.kernels
    result = benchmark(config, args.steps, args.warmup, impl)
    print(f"{name}: G inference {result['infer_images_per_s']:.1f} images/s "
          f"({result['infer_gflops']:.1f} GFLOP per batch)")
    print(f"{name}: train step {result['step_gflops']:.1f} GFLOP, "
          f"{result['step_gflops'] / result['step_s']:.1f} GFLOP/s achieved; compiled step "
          f"peak memory {result['peak_bytes'] / 2**20:.0f} MiB (XLA memory analysis)")
    if args.peak:
        peak = measure_peak()
        achieved = result["step_gflops"] / result["step_s"]
        print(f"peak float32: matmul {peak['matmul']:.0f} GFLOP/s, best conv "
              f"{peak['conv']:.0f} GFLOP/s; train step at {100 * achieved / peak['peak']:.0f}% "
              f"of {peak['peak']:.0f}")
    print(
        f"{name} ({impl or kernels.conv_impl()} convs): "
        f"G {result['g_params']:,} / D {result['d_params']:,} params | compile "
        f"{result['compile_s']:.1f}s | step {1000 * result['step_s']:.1f} ms | "
        f"{result['images_per_s']:.1f} images/s"
    )


def compare_impls(config, name: str, steps: int, warmup: int, rounds: int) -> None:
    """Times the train step in each formulation, alternating rounds; prints each round."""
    timed = {impl: prepare(config, impl)[0] for impl in kernels.IMPLS}
    for t in timed.values():
        t.run(warmup)
    totals = dict.fromkeys(timed, 0.0)
    for r in range(rounds):
        for impl, t in timed.items():
            seconds = t.run(steps)
            totals[impl] += seconds
            print(f"{name}: round {r} {impl}: {steps * t.images / seconds:.2f} images/s")
    for impl, seconds in totals.items():
        print(f"{name}: {impl} total {rounds * steps * timed[impl].images / seconds:.2f} "
              f"images/s")


if __name__ == "__main__":
    main()
