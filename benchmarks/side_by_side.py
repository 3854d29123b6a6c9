"""jaxcolor against a PyTorch implementation of the same networks, alternating, in one process tree.

    python benchmarks/side_by_side.py --torch_python /path/to/venv-with-torch/bin/python \
        --row pix2pix_lab:256:4 --row lab_gan:256:4 --row lab_gan:64:16 --steps 5 --rounds 2

Two workers, one per framework, each a child process of this one: both build their model and
compile or warm up first; then rounds alternate (JAX train steps, PyTorch train steps, JAX
inference, PyTorch inference), so that the load of a shared machine falls on both sides alike.
Only one worker computes at a time. Before timing, the parameter counts of both sides must be
equal. Every round's images/s is printed, so noise is visible; the ratio is total JAX images/s
over total PyTorch images/s, each summed over all rounds.

The PyTorch side (``benchmarks/torch_models.py``) needs the ``[bench]`` extra (``torch``), in
this interpreter or in the one given by ``--torch_python``; the JAX side needs jaxcolor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def row_config(row: str):
    """``experiment:image_size:batch_size`` -> the jaxcolor config of that benchmark row, resolved
    (the U-Net's depth made explicit, as the PyTorch side needs it)."""
    from jaxcolor import config as config_lib
    from jaxcolor.training import throughput

    name, size, batch = row.split(":")
    config = config_lib.load_file(os.path.join(REPO, "experiments", f"{name}.py"))
    return config_lib.resolve(throughput.override(config, int(size), int(batch)))


def torch_spec(config) -> dict:
    """What the PyTorch worker needs to build the same model, batch and losses."""
    from jaxcolor.tasks import get_task

    task = get_task(config.data.task)
    loss = config.loss
    return {
        "generator": config.model.generator, "discriminator": config.model.discriminator,
        "cond_ch": task.cond_channels, "target_ch": task.target_channels,
        "num_downs": config.model.num_downs, "image_size": config.data.image_size,
        "batch_size": config.train.batch_size,
        "loss": {"adversarial": loss.adversarial, "reconstruction": loss.reconstruction,
                 "label_flip": loss.label_flip, "soft_labels": loss.soft_labels,
                 "smoothing": loss.label_smoothing, "adv_weight": loss.adv_weight,
                 "recon_weight": loss.recon_weight},
    }


class JaxSide:
    """The jaxcolor train step and G inference (``jaxcolor.training.throughput.prepare``)."""

    def __init__(self, row: str, warmup: int, impls: list[str]):
        from jaxcolor.training import throughput

        self.timed = {}
        for impl in impls:  # one compiled train step and inference per convolution formulation
            train, infer = throughput.prepare(row_config(row), impl)
            train.run(warmup)
            infer.run(warmup)
            self.timed[impl] = {"train": train, "infer": infer}

    def params(self) -> list[int]:
        info = next(iter(self.timed.values()))["train"].info
        return [info["g_params"], info["d_params"]]

    def time(self, what: str, steps: int, impl: str) -> float:
        return self.timed[impl][what].run(steps)


class TorchSide:
    """The PyTorch train step and G inference, channels_last, eager."""

    def __init__(self, spec: dict, warmup: int):
        import torch

        sys.path.insert(0, HERE)
        import torch_models

        torch.manual_seed(0)
        self.torch = torch
        g, d = torch_models.build(spec["generator"], spec["discriminator"], spec["cond_ch"],
                                  spec["target_ch"], spec["num_downs"])
        self.g, self.d = g.to(memory_format=torch.channels_last), d.to(
            memory_format=torch.channels_last)
        self.counts = [torch_models.param_count(g), torch_models.param_count(d)]
        n, s = spec["batch_size"], spec["image_size"]
        self.cond = (torch.rand(n, spec["cond_ch"], s, s) * 2 - 1).to(
            memory_format=torch.channels_last)
        self.target = (torch.rand(n, spec["target_ch"], s, s) * 2 - 1).to(
            memory_format=torch.channels_last)
        self.step = torch_models.TrainStep(self.g, self.d, spec["loss"])
        self.images = n
        self.time("train", warmup)
        self.time("infer", warmup)

    def params(self) -> list[int]:
        return self.counts

    def time(self, what: str, steps: int, impl: str = "") -> float:
        import time

        torch = self.torch
        start = time.perf_counter()
        if what == "train":
            self.g.train()
            self.d.train()
            for _ in range(steps):
                losses = self.step(self.cond, self.target)
            float(losses[0])
        else:
            self.g.eval()
            with torch.inference_mode():
                for _ in range(steps):
                    out = self.g(self.cond)
                float(out[0, 0, 0, 0])
        return time.perf_counter() - start


def worker(side: str) -> None:
    """Serves one framework over stdin/stdout: JSON requests in, one JSON answer per line."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to stderr, not into the protocol
    impl = None
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "setup":
            impl = (JaxSide(req["row"], req["warmup"], req["impls"]) if side == "jax"
                    else TorchSide(req["spec"], req["warmup"]))
            out.write(json.dumps({"params": impl.params()}) + "\n")
        elif req["cmd"] == "time":
            seconds = impl.time(req["what"], req["steps"], req.get("impl"))
            out.write(json.dumps({"seconds": seconds}) + "\n")
        else:
            return


class Worker:
    """A worker child process and its request/answer pipe."""

    def __init__(self, python: str, side: str):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", side],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.side = side

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker exited (rc {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:  # the worker already exited; its traceback is on stderr
            pass
        self.proc.wait()


def run_row(row: str, jax_w: Worker, torch_w: Worker, steps: int, rounds: int,
            warmup: int, impls: list[str]) -> dict[str, dict[str, float]]:
    """Sets up both sides for one row, checks parameter counts, alternates rounds (JAX in each
    convolution formulation of ``impls``, then PyTorch) and prints every round."""
    config = row_config(row)
    batch = config.train.batch_size
    j = jax_w.ask(cmd="setup", row=row, warmup=warmup, impls=impls)["params"]
    t = torch_w.ask(cmd="setup", spec=torch_spec(config), warmup=warmup)["params"]
    print(f"{row}: parameters G {j[0]:,} / D {j[1]:,} (JAX), G {t[0]:,} / D {t[1]:,} (PyTorch)",
          flush=True)
    if j != t:
        raise SystemExit(f"{row}: parameter counts differ, JAX {j} vs PyTorch {t}")
    sides = [(f"jax {impl}" if impl else "jax", jax_w, impl) for impl in impls]
    sides.append(("torch", torch_w, None))
    totals = {}
    for what in ("train", "infer"):
        seconds = dict.fromkeys((name for name, _, _ in sides), 0.0)
        for r in range(rounds):
            for name, w, impl in sides:
                s = w.ask(cmd="time", what=what, steps=steps, impl=impl)["seconds"]
                seconds[name] += s
                print(f"{row} {what} round {r}: {name:11s} {steps * batch / s:8.2f} images/s",
                      flush=True)
        ips = {k: rounds * steps * batch / v for k, v in seconds.items()}
        totals[what] = ips
        print(f"{row} {what}: " + " | ".join(
            f"{k} {v:.2f} images/s ({v / ips['torch']:.2f}x PyTorch)" for k, v in ips.items()),
            flush=True)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--row", action="append",
                        help="experiment:image_size:batch_size (repeatable; default: the three "
                             "rows of issue 10)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--jax_python", default=sys.executable)
    parser.add_argument("--torch_python", default=sys.executable)
    parser.add_argument("--kernels", default="auto", choices=("auto", "native", "fast", "both"),
                        help="JAX convolution formulation(s); auto: the backend's default")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    rows = args.row or ["pix2pix_lab:256:4", "lab_gan:256:4", "lab_gan:64:16"]
    jax_w, torch_w = Worker(args.jax_python, "jax"), Worker(args.torch_python, "torch")
    impls = {"auto": [None], "both": ["native", "fast"]}.get(args.kernels, [args.kernels])
    results = {}
    try:
        for row in rows:
            results[row] = run_row(row, jax_w, torch_w, args.steps, args.rounds, args.warmup,
                                   impls)
    finally:
        jax_w.close()
        torch_w.close()
    print("\nrow | what | side | images/s | side/PyTorch")
    for row, totals in results.items():
        for what, ips in totals.items():
            for side, v in ips.items():
                print(f"{row} | {what} | {side} | {v:.2f} | {v / ips['torch']:.2f}")


if __name__ == "__main__":
    main()
