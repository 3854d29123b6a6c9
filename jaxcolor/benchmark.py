"""Train-step and inference throughput: ``python -m jaxcolor.benchmark --config experiments/X.py``.

Times the jitted train step (compile, then ``--steps`` steps on a fixed device batch, after
``--warmup`` steps) on all local devices and prints images/s. Before that last line it prints
G inference images/s, XLA's memory analysis of the compiled step, and achieved GFLOP/s against
the machine's measured peak (``--peak``). FLOPs are the convolutions' and matrix products' of
the native formulation (``jaxcolor.models.flops``: the model's arithmetic, the same on every
backend).
Data loading is not included; the trainer logs the fraction of time it waits for data
(``perf/data_wait_fraction``).

``--kernels native|fast`` picks the convolution formulation and ``--transpose native|subpixel``
the transposed convolutions' (``jaxcolor.models.kernels``); ``both`` times each, alternating
rounds, to choose per backend by measurement. ``--peak`` measures the peak in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxcolor import cli
from jaxcolor.models import kernels
from jaxcolor.training.state import COMPUTE_DTYPES
from jaxcolor.training.throughput import compare, measure, measure_peak, override, prepare


def _define_flags() -> None:
    from absl import flags

    cli.define_config_flag()
    flags.DEFINE_integer("image_size", None, "data.image_size (a U-Net's depth follows it).",
                         lower_bound=16)
    flags.DEFINE_integer("batch_size", None, "train.batch_size (global).", lower_bound=1)
    flags.DEFINE_integer("num_downs", None, "U-Net depth (default: the deepest for the size).")
    flags.DEFINE_enum("compute_dtype", None, sorted(COMPUTE_DTYPES), "train.compute_dtype.")
    flags.DEFINE_integer("steps", 10, "Timed steps.", lower_bound=1)
    flags.DEFINE_integer("warmup", 2, "Untimed steps first.", lower_bound=0)
    flags.DEFINE_enum("kernels", None, [*kernels.IMPLS, "both"],
                      "Convolution formulation (default: the backend's choice).")
    flags.DEFINE_enum("transpose", None, [*kernels.TRANSPOSE_IMPLS, "both"],
                      "Transposed-convolution formulation (default: the backend's choice).")
    flags.DEFINE_integer("rounds", 2, "Alternating rounds when a choice is 'both'.",
                         lower_bound=1)
    flags.DEFINE_bool("peak", False, "Measure the peak GFLOP/s and print achieved/peak.")


def main(argv: Sequence[str]) -> None:
    """absl entry point: times the config's train step and G inference; prints the results."""
    from absl import app, flags

    args = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    config = override(args.config, args.image_size, args.batch_size, args.num_downs,
                      args.compute_dtype)
    devices = jax.devices()
    name = (f"{config.experiment} {config.data.image_size}px batch {config.train.batch_size} "
            f"{config.train.compute_dtype} on {len(devices)} x {devices[0].device_kind}")

    def choices(arg: str | None, impls: tuple[str, ...], default: str) -> list[str]:
        return list(impls) if arg == "both" else [arg or default]

    variants = [(c, t) for c in choices(args.kernels, kernels.IMPLS, kernels.conv_impl())
                for t in choices(args.transpose, kernels.TRANSPOSE_IMPLS, kernels.transpose_impl())]
    prepared = {v: prepare(config, *v) for v in variants}
    if len(variants) > 1:
        compare(prepared, name, args.steps, args.warmup, args.rounds)
    # The last line: the single choice given, else the backend's default formulation.
    chosen = (args.kernels if args.kernels in kernels.IMPLS else kernels.conv_impl(),
              args.transpose if args.transpose in kernels.TRANSPOSE_IMPLS
              else kernels.transpose_impl())
    result = measure(*prepared[chosen], args.steps, args.warmup)
    print(f"{name}: G inference {result['infer_images_per_s']:.1f} images/s "
          f"({result['infer_gflops']:.1f} GFLOP per batch)")
    print(f"{name}: train step {result['step_gflops']:.1f} GFLOP, "
          f"{result['step_gflops'] / result['step_s']:.1f} GFLOP/s achieved; compiled step "
          f"peak memory {result['peak_bytes'] / 2**20:.0f} MiB (XLA memory analysis)")
    if args.peak:
        peak = measure_peak(config.train.compute_dtype)
        achieved = result["step_gflops"] / result["step_s"]
        print(f"peak {peak['dtype']}: matmul {peak['matmul']:.0f} GFLOP/s, best conv "
              f"{peak['conv']:.0f} GFLOP/s; train step at {100 * achieved / peak['peak']:.1f}% "
              f"of {peak['peak']:.0f}")
    print(
        f"{name} ({chosen[0]} convs, {chosen[1]} transposed): "
        f"G {result['g_params']:,} / D {result['d_params']:,} params | compile "
        f"{result['compile_s']:.1f}s | step {1000 * result['step_s']:.1f} ms | "
        f"{result['images_per_s']:.1f} images/s"
    )


def run() -> None:
    """``python -m jaxcolor.benchmark``; no persistent compilation cache: compiles are timed."""
    cli.run_app(main, _define_flags, compile_cache=False)


if __name__ == "__main__":
    run()
