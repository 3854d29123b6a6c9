"""Training-time validation: losses, metrics and sample grids on fixed validation images."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxcolor import runs
from jaxcolor.evaluation import metrics
from jaxcolor.training.state import GAN


class Validator:
    """Validation losses, image metrics and the sample grid on fixed validation images.

    Scores exactly as ``evaluate`` does: the same examples (``evaluate.ground_truth``), the same
    prediction (``predictor.Predictor.predict_square``, batches of ``train.batch_size``) and the
    same metric code (``evaluate.measure``), so ``val/<metric>`` equals ``evaluate`` on the
    validation images at the same step. Each validation is also appended to the run folder's
    ``validation.jsonl`` (model and gray baseline), which ``jaxcolor.load`` reports.
    """

    def __init__(self, gan: GAN, config: ml_collections.ConfigDict, files: list[str], mesh,
                 workdir: str | None = None):
        from jaxcolor.evaluation import scoring as evaluate
        from jaxcolor.inference.loading import generator_apply
        from jaxcolor.inference.predictor import Predictor

        self.gan, self.workdir = gan, workdir
        self.skipped: list[str] = []
        examples = [example for _, example in evaluate.ground_truth(
            files, config.data.image_size, config.data.skip_grayscale,
            config.data.num_val_images, self.skipped, config.data.max_pixels)]
        self.batches = examples  # truthy when there is something to validate
        self.predictor = Predictor(gan.task, generator_apply(gan.generator), mesh,
                                   config.train.batch_size)
        if examples:
            stacked = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
            self.truth = evaluate.truth_rgb(stacked)
            self.target = np.asarray(gan.task.split(stacked)[1])
            values, _ = evaluate.measure(self.truth, self.truth)  # gray row: images only
            self.gray = evaluate.mean_metrics(values[evaluate.GRAY])

    def __call__(self, variables, step: int | None = None
                 ) -> tuple[dict[str, float], list[list[np.ndarray]]]:
        """Mean validation losses and metrics (``val/<name>``) and grid rows
        (gray input | generated | ground truth) of G's ``variables`` (``{"params",
        "batch_stats"}``: ``state.inference_tree``'s). With ``step``, process 0 records them."""
        from jaxcolor.evaluation import scoring as evaluate

        if not self.batches:
            return {}, []
        pred, out = self.predictor.predict_square(variables, self.truth)
        values, _ = evaluate.measure(pred, self.truth)
        means = evaluate.mean_metrics(values[evaluate.MODEL])
        if step is not None and self.workdir is not None and jax.process_index() == 0:
            runs.append_validation(self.workdir, step, means, self.gray)
        means.update(mse=float(np.square(out - self.target).mean()),
                     l1=float(np.abs(out - self.target).mean()))
        gray = metrics.gray_baseline(self.truth)
        rows = [[gray[i], pred[i], self.truth[i]] for i in range(len(pred))]
        return {f"val/{k}": v for k, v in means.items()}, rows
