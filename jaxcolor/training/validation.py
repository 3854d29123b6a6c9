"""Training-time validation: losses, metrics, per-image verdicts against gray, the colour-strength
calibration and sample grids on fixed validation images; and the baselines fitted on the
training photos at the start of a run."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxcolor import colour, runs
from jaxcolor.evaluation import calibration, metrics
from jaxcolor.training.state import GAN

# Training photos the baselines are fitted on: the mean ab per L bin settles well before this.
BASELINE_IMAGES = 256


class Validator:
    """Validation losses, image metrics and the sample grid on fixed validation images.

    Scores exactly as ``evaluate`` does at colour strength 1: the same examples
    (``evaluate.ground_truth``), the same prediction (``predictor.Predictor.predict_chroma`` and
    ``render_square``, batches of ``train.batch_size``) and the same metric code
    (``evaluate.measure``), so ``val/<metric>`` equals ``evaluate --colour_strength 1`` on the
    validation images at the same step. Each validation also fits the colour strength of that
    step on these images (``calibration.fit``, host-side, from the same prediction) and counts
    the images on which the model beats gray, at strength 1 and at the fitted one. Process 0
    appends each validation to the run folder's ``validation.jsonl`` (model and gray baseline,
    which ``jaxcolor.load`` reports) and records the calibration (``runs.write_calibration``).
    """

    def __init__(self, gan: GAN, config: ml_collections.ConfigDict, files: list[str], mesh,
                 workdir: str | None = None):
        from jaxcolor.evaluation import scoring as evaluate
        from jaxcolor.inference.loading import generator_apply
        from jaxcolor.inference.predictor import Predictor

        self.gan, self.workdir = gan, workdir
        self.skipped: list[str] = []
        self.calibrated_step: int | None = None
        self.line = ""  # the last validation's verdict, for the console
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
            self.gray_values = values[evaluate.GRAY]
            self.gray = evaluate.mean_metrics(self.gray_values)

    def __call__(self, variables, step: int | None = None
                 ) -> tuple[dict[str, float], list[list[np.ndarray]]]:
        """Mean validation losses and metrics (``val/<name>``) and grid rows
        (gray input | generated | ground truth) of G's ``variables`` (``{"params",
        "batch_stats"}``: ``state.inference_tree``'s). With ``step``, process 0 records them."""
        from jaxcolor.evaluation import scoring as evaluate
        from jaxcolor.inference.predictor import render_square

        if not self.batches:
            return {}, []
        ab, out = self.predictor.predict_chroma(variables, self.truth)
        pred = render_square(self.truth, ab, 1.0)
        values, _ = evaluate.measure(pred, self.truth)
        means = evaluate.mean_metrics(values[evaluate.MODEL])
        won = {k: v["beats"] for k, v in
               metrics.verdicts(values[evaluate.MODEL], self.gray_values).items()}
        fitted = self._calibrate(ab, step)
        n = len(self.truth)
        self.line = (f"validation at step {step}: beats gray on {calibration.share_line(won, n)}; "
                     f"at the calibrated colour_strength {fitted['strength']:g}: "
                     f"{calibration.share_line(fitted['beats_gray'], n)}")
        if step is not None and self.workdir is not None and jax.process_index() == 0:
            runs.append_validation(self.workdir, step, means, self.gray, num_images=n,
                                   beats_gray=won, colour_strength=fitted["strength"],
                                   calibrated_beats_gray=fitted["beats_gray"])
        scalars = {**means, "mse": float(np.square(out - self.target).mean()),
                   "l1": float(np.abs(out - self.target).mean()),
                   "colour_strength": fitted["strength"]}
        for key in ("psnr", "auc"):
            scalars[f"beats_gray_{key}"] = won[key] / n
            scalars[f"calibrated_beats_gray_{key}"] = fitted["beats_gray"][key] / n
        gray = metrics.gray_baseline(self.truth)
        rows = [[gray[i], pred[i], self.truth[i]] for i in range(len(pred))]
        return {f"val/{k}": v for k, v in scalars.items()}, rows

    def _calibrate(self, ab: np.ndarray, step: int | None) -> dict:
        """Fits the colour strength on the validation images; process 0 records it for
        ``step``. Returns the strength and the images beating gray there."""
        curve = calibration.summarize_curve(calibration.curve_values(self.truth, ab),
                                            self.gray_values)
        record = calibration.record(curve, "validation", "training")
        if step is not None and self.workdir is not None and jax.process_index() == 0:
            runs.write_calibration(self.workdir, step, record)
        self.calibrated_step = step
        at = curve["strengths"].index(record["colour_strength"])
        return {"strength": record["colour_strength"],
                "beats_gray": {k: v[at] for k, v in curve["beats_gray"].items()}}

    def calibrate(self, variables, step: int) -> None:
        """Fits and records the colour strength of checkpoint ``step`` for G's ``variables``
        unless the last validation already did (a run stopped between validations); every
        process calls it."""
        if not self.batches or self.calibrated_step == step:
            return
        self._calibrate(self.predictor.predict_chroma(variables, self.truth)[0], step)


def fit_training_baselines(workdir: str, files: list[str], config: ml_collections.ConfigDict
                           ) -> None:
    """Fits the mean-ab baselines (``evaluation.baselines``) on up to ``BASELINE_IMAGES`` of the
    training photos (a sample drawn with the run's seed, at the training size, no augmentation)
    and records them in the run folder, unless it already has them (a resumed run). Call it
    from process 0 only."""
    from jaxcolor.evaluation import baselines
    from jaxcolor.evaluation import scoring as evaluate

    if runs.read_baselines(workdir) is not None:
        return
    order = np.random.default_rng(config.train.seed).permutation(len(files))
    sample = [files[i] for i in order]
    labs = evaluate.ground_truth(sample, config.data.image_size, config.data.skip_grayscale,
                                 BASELINE_IMAGES, [], config.data.max_pixels)
    fitted = baselines.fit(colour.denormalize_lab(e["lab"][..., :1], e["lab"][..., 1:])
                           for _, e in labs)
    fitted.update(image_size=int(config.data.image_size), split="train")
    runs.write_baselines(workdir, fitted)
