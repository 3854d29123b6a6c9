"""Train-step throughput: ``python -m jaxcolor.benchmark --config experiments/X.py``.

Times the jitted train step (compile, then ``--steps`` steps on a fixed device batch, after
``--warmup`` steps) on all local devices and prints images/s. Data loading is not included; the
trainer logs the fraction of time it waits for data (``perf/data_wait_fraction``).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import numpy as np

from jaxcolor import config as config_lib
from jaxcolor import sharding
from jaxcolor.train_state import build_gan, init_state, param_count
from jaxcolor.train_step import make_train_step


def load_config(path: str):
    """``get_config`` of an experiment file; ``file.py:preset`` passes the preset."""
    path, _, preset = path.partition(":")
    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset or None)


def benchmark(config, steps: int = 10, warmup: int = 2) -> dict[str, float]:
    """Compile time, mean step time and images/s of the train step for ``config``."""
    mesh = sharding.make_mesh()
    config_lib.validate(config_lib.resolve(config), jax.device_count())
    gan = build_gan(config)
    size, batch_size = config.data.image_size, config.train.batch_size
    rep = sharding.replicated(mesh)
    state = jax.jit(lambda k: init_state(gan, k, size), out_shardings=rep)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = sharding.to_global(
        {k: rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
         for k in ("lab", "rgb")}, mesh)
    step = jax.jit(make_train_step(gan, config), in_shardings=(rep, sharding.batch_sharded(mesh)),
                   out_shardings=(rep, rep), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    return {
        "g_params": param_count(state.g.params),
        "d_params": param_count(state.d.params),
        "compile_s": compile_s,
        "step_s": step_s,
        "images_per_s": batch_size / step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment file[:preset]")
    parser.add_argument("--image_size", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--num_downs", type=int, help="U-Net depth (default: deepest for size)")
    parser.add_argument("--compute_dtype", choices=sorted(config_lib.COMPUTE_DTYPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.config)
    if args.image_size:
        config.data.image_size = args.image_size
        if config.model.generator == "unet":
            config.model.num_downs = args.num_downs  # None: the deepest the size allows
    if args.batch_size:
        config.train.batch_size = args.batch_size
    if args.compute_dtype:
        config.train.compute_dtype = args.compute_dtype
    result = benchmark(config, args.steps, args.warmup)
    devices = jax.devices()
    print(
        f"{config.experiment} {config.data.image_size}px batch {config.train.batch_size} "
        f"{config.train.compute_dtype} on {len(devices)} x {devices[0].device_kind}: "
        f"G {result['g_params']:,} / D {result['d_params']:,} params | compile "
        f"{result['compile_s']:.1f}s | step {1000 * result['step_s']:.1f} ms | "
        f"{result['images_per_s']:.1f} images/s"
    )


if __name__ == "__main__":
    main()
