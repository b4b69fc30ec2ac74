"""What the keys and columns of `sublim kd`'s and `sublim report`'s files mean.

The key lists that exist in code are imported from where they live (the training loop's history
keys, `kd analyze`'s leading columns, the report's summary statistics and KD axes); the others
are written here from the code that fills them, and `tests/test_docs_columns.py` holds them to
what the code really writes. It imports torch (through `sublim.kd`) and pandas (through
`sublim.analysis`): only the documentation and its test read it.
"""

from __future__ import annotations

from ..analysis.kd import KD_AXES, KD_METRICS
from ..analysis.kd_table import COLUMNS as BENCHMARK_COLUMNS
from ..analysis.summary import SUMMARY_STATS
from ..kd.analyze import FIRST_METRICS, LEAD
from ..kd.train import HISTORY_KEYS

# ---------------------------------------------------------------------------------------------
# One KD experiment's directory
# ---------------------------------------------------------------------------------------------

STATUS_KEYS: tuple[str, ...] = (
    "status",
    "config_hash",
    "epoch",
    "epochs",
    "best_acc",
    "best_epoch",
    "last_acc",
    "started_at",
    "finished_at",
    "seconds",
    "train_seconds",
    "extra_parameters",
    "skipped_files",
    "error",
)
STATUS_HELP: dict[str, str] = {
    "status": "in_progress, completed or failed (a directory without status.json reads as "
    "not_started)",
    "config_hash": "hash of the experiment's KDConfig; a status with another hash is not this "
    "experiment's",
    "epoch": "epochs finished so far, init-stage epochs (`init_epochs`) counted first",
    "epochs": "epochs in all: init_epochs + epochs",
    "best_acc": "best test accuracy over the main-stage epochs so far (-1 before the first)",
    "best_epoch": "main-stage epoch (from 1; 0 for an `epochs = 0` run's pretrained weights) "
    "of best_acc, whose weights are best.pt (-1 before "
    "the first)",
    "last_acc": "test accuracy after the last finished epoch",
    "started_at": "UTC time this training session started (ISO 8601, microseconds; a resume "
    "starts a new session)",
    "finished_at": "completed only: UTC time training finished",
    "seconds": "completed only: wall seconds of the last session, building the models included",
    "train_seconds": "completed only: wall seconds of the last session's epoch loop (training "
    "and evaluation)",
    "extra_parameters": "completed only: parameters the method adds (regressors, projectors, "
    "a teacher tail ...); 0 without distillation",
    "skipped_files": "completed only: distinct image files found unreadable and skipped in the "
    "last session (each warned about once); 0 for the in-memory datasets",
    "error": "failed only: the exception's type and message, on one line (at most 500 "
    "characters; `KeyboardInterrupt: interrupted` for Ctrl-C)",
}

METRICS_KEYS: tuple[str, ...] = (*HISTORY_KEYS, "terms", "skipped_files")
METRICS_HELP: dict[str, str] = {
    "epoch": "epoch number, from 1, init-stage epochs counted first; 0 for the one row of an "
    "`epochs = 0` run (pretrained weights evaluated, not trained)",
    "stage": "init (FitNets' hint stage or FT's paraphraser stage, `init_epochs`) or main; "
    "pretrained for an `epochs = 0` run, whose lr, train_loss and train_acc are null",
    "lr": "learning rate the epoch started with (with a per-batch OneCycle schedule, its first "
    "step's)",
    "train_loss": "mean over the epoch's training samples of the loss that was minimised "
    "(weighted cross-entropy plus the method's weighted terms)",
    "train_acc": "accuracy of the student's predictions on the epoch's (augmented) training "
    "batches, taken during training (0 in FT's paraphraser stage, where the student does not "
    "run)",
    "test_loss": "mean cross-entropy on the test set after the epoch (eval mode)",
    "test_acc": "accuracy on the test set after the epoch: the number best.pt and the report use",
    "terms": "per epoch, an object of the named loss terms' means over the training samples: "
    "`ce` (unweighted cross-entropy) and the method's terms as weighted in the loss (e.g. `kd`, "
    "`dkd_tckd`, `feat`); {} in an init stage",
    "skipped_files": "per epoch, distinct image files found unreadable so far in this session "
    "(a streamed dataset such as imagenet drops them from their batch, warned about once); 0 "
    "for the in-memory datasets",
}

LAST_KEYS: tuple[str, ...] = (
    "config_hash",
    "epoch",
    "stage",
    "model",
    "distiller",
    "optimizer",
    "scaler",
    "rng",
    "cuda_rng",
    "history",
    "best_acc",
    "best_epoch",
)
LAST_HELP: dict[str, str] = {
    "config_hash": "the experiment's config hash (a resume ignores a last.pt with another one)",
    "epoch": "epochs finished, init-stage epochs counted first (the next epoch to run)",
    "stage": "the stage of the last finished epoch: init or main",
    "model": "the student's (or teacher's) state dict after that epoch",
    "distiller": "the method's state dict (regressors, projectors, ...); {} without one",
    "optimizer": "the optimizer's state dict",
    "scaler": "the mixed-precision GradScaler's state dict",
    "rng": "PyTorch's CPU random-number-generator state",
    "cuda_rng": "every CUDA device's RNG state ([] without CUDA)",
    "history": "the metrics.json history so far",
    "best_acc": "best main-stage test accuracy so far",
    "best_epoch": "its main-stage epoch (from 1)",
}

BEST_KEYS: tuple[str, ...] = (
    "weights",
    "distiller",
    "model",
    "num_classes",
    "epoch",
    "test_acc",
    "config_hash",
)
BEST_HELP: dict[str, str] = {
    "weights": "the model's state dict at its best main-stage epoch (a student's teacher is "
    "loaded from here)",
    "distiller": "the method's state dict at that epoch (SimKD's projector, fkd's teacher "
    "tail ...); {} without one",
    "model": "the model's name, e.g. resnet8",
    "num_classes": "number of classes of its head",
    "epoch": "the main-stage epoch (from 1) of these weights; 0: pretrained weights as loaded "
    "(`epochs = 0`)",
    "test_acc": "their test accuracy",
    "config_hash": "the experiment's config hash",
}

# ---------------------------------------------------------------------------------------------
# sublim kd analyze: layer_quality.csv, layer_quality.json, cka_<teacher>.csv
# ---------------------------------------------------------------------------------------------

# After LEAD and FIRST_METRICS, the columns come in the order geometry.layer_quality fills a row.
QUALITY_MORE: tuple[str, ...] = (
    "cos_intra",
    "cos_intra_ref",
    "cos_inter",
    "cos_min_intra",
    "cos_min_intra_ref",
    "dist_min_inter",
    "norm_mean",
    "ed",
    "entropy",
    "entropy_corrected",
    "degenerate_classes",
    "k",
    "d_g",
    "twonn",
    "pca90",
    "pca95",
    "probe_acc",
    "layer",
    "dim",
    "n_a",
    "n_b",
    "seed",
)
QUALITY_COLUMNS: tuple[str, ...] = (*LEAD, *FIRST_METRICS, *QUALITY_MORE)
QUALITY_HELP: dict[str, str] = {
    "index": "generalized-layer index (0 = first; `sublim kd layers MODEL` lists them)",
    "name": "the layer's name in the model",
    "shape": "per-sample output shape of the layer, e.g. 16x32x32",
    "rel_depth": "relative depth: index / (number of layers - 1), 0 for the first layer, 1 for "
    "the last",
    "model": "the model analysed, e.g. resnet8",
    "dataset": "the dataset whose training split was analysed",
    "s": "separation S as the reference computes it: mean intra-class |cos| over whole class "
    "blocks of set A (the diagonal of ones included) minus the mean inter-class |cos|",
    "i": "information I as the reference computes it: (1 - mean over classes of the minimum "
    "intra-class |cos|, diagonal included) x the reference's spectral entropy (`entropy`) / ln 5",
    "e": "efficiency E: k x 2 x dist_min_inter / norm_mean",
    "q": "knowledge quality Q = S + sqrt(I x E), the reference's: what `auto:q` ranks layers by",
    "sqrt_ie": "sqrt(I x E), the second term of Q (nan when I x E < 0)",
    "s_corrected": "S with the intra-class mean over distinct pairs of samples (cos_intra - "
    "cos_inter)",
    "i_corrected": "I as intended: (1 - cos_min_intra) x entropy_corrected, in float64",
    "q_corrected": "s_corrected + sqrt_ie_corrected",
    "sqrt_ie_corrected": "sqrt(i_corrected x E)",
    "cos_intra": "mean over classes of the mean |cos| between distinct samples of the class in "
    "set A (nan if a class has one sample)",
    "cos_intra_ref": "the same over the whole class block, the diagonal of ones included (the "
    "reference's)",
    "cos_inter": "mean over pairs of different classes of the mean |cos| between their samples "
    "in set A",
    "cos_min_intra": "mean over classes of the smallest |cos| between distinct samples of the "
    "class",
    "cos_min_intra_ref": "the same over the whole class block, diagonal included (the reference's)",
    "dist_min_inter": "mean over classes of the smallest Euclidean distance from a sample of the "
    "class to a sample of another class (set A)",
    "norm_mean": "mean over classes of the mean feature norm of the class's samples (set A)",
    "ed": "mean over classes of the embedding dimension ED_c: principal axes of the class's "
    "features in set B explaining 95 % of its variance (the reference's float32 cut)",
    "entropy": "the reference's spectral entropy: per class over the first M = sum of ED_c "
    "variance ratios (a class reaching a zero ratio gets 0), mean over classes",
    "entropy_corrected": "mean over classes of the entropy of the class's own first ED_c "
    "variance ratios, renormalised, divided by ln n_c",
    "degenerate_classes": "classes of set B without within-class variance (their terms are nan)",
    "k": "E's scale (n_train / pi)^(1 / d_g), n_train the training images analysed",
    "d_g": "min(|A|, the layer's output size per sample): the dimension in k",
    "twonn": "TwoNN intrinsic dimension of the L2-normalised samples of set A",
    "pca90": "principal axes of set A's features explaining 90 % of the variance",
    "pca95": "principal axes of set A's features explaining 95 % of the variance",
    "probe_acc": "with `--probe` only: training accuracy on set A of a softmax linear classifier "
    "fitted by full-batch gradient descent",
    "layer": "the generalized-layer index again, as the geometry module reports it",
    "dim": "values per sample in the layer's output (the flattened shape)",
    "n_a": "size of set A (class-balanced: floor(5000 / C) per class, or `--per-class-a`)",
    "n_b": "size of set B (min(500, floor(N / C)) per class, 50 for TinyImageNet CNNs, or "
    "`--per-class-b`)",
    "seed": "seed of the class-balanced subsets A and B (`--seed`)",
}

QUALITY_KEY_KEYS: tuple[str, ...] = ("key", "seconds")
QUALITY_KEY_HELP: dict[str, str] = {
    "key": "what the rows depend on: version (of the metrics), identity (`config:<hash>` of an "
    "experiment, `sha256:<digest>` of a lone checkpoint), model, dataset, train_limit, seed, "
    "probe, per_class_a, per_class_b, limit; a rerun with an equal key reads the CSV",
    "seconds": "how long the analysis took",
}

CKA_COLUMNS: tuple[str, ...] = (
    "student_index",
    "student_name",
    "teacher_index",
    "teacher_name",
    "cka",
    "n",
    "seed",
)
CKA_HELP: dict[str, str] = {
    "student_index": "generalized-layer index of the analysed model's layer",
    "student_name": "its name",
    "teacher_index": "generalized-layer index of the `--against` model's layer",
    "teacher_name": "its name",
    "cka": "linear CKA between the two layers' outputs on the same images",
    "n": "number of images compared (class-balanced, from the analysed model's training split)",
    "seed": "seed of the image subset (`--seed`)",
}

# ---------------------------------------------------------------------------------------------
# sublim report's tables
# ---------------------------------------------------------------------------------------------

AXES = "<axes>"  # stands for the grouping columns, which differ from report to report
STATS_HELP: dict[str, str] = {
    "metric": "the column summarised (one row per group and metric)",
    "n": "runs of the group with a finite value",
    "mean": "their mean",
    "std": "their sample standard deviation (empty for one run)",
    "median": "their median",
    "ci_low": "lower end of the bootstrap confidence interval of the mean (`--ci`, `--level`, "
    "`--n-boot`; resampling seeded per group from `--ci-seed`); empty for one run",
    "ci_high": "upper end of that interval",
}
SUMMARY_COLUMNS: tuple[str, ...] = (AXES, "metric", *SUMMARY_STATS)
SUMMARY_HELP: dict[str, str] = {
    AXES: "one column per grouping axis: `--by`, else the config columns that vary between the "
    "runs, without redundant ones (e.g. condition, m)",
    **STATS_HELP,
    "metric": "the runs.csv column summarised (`--metric`; by default student_final_acc, "
    "student_init_acc, teacher_final_acc, student_final_aux_loss)",
}

KD_AXES_HELP: dict[str, str] = {
    "dataset": "the dataset",
    "teacher": "the teacher model; `-` for a teacher or a student trained alone",
    "student": "the model trained",
    "method": "the experiment's label, else its method; `alone` for a teacher",
}
KD_SUMMARY_COLUMNS: tuple[str, ...] = (*KD_AXES, "recipe", "metric", *SUMMARY_STATS)
KD_SUMMARY_HELP: dict[str, str] = {
    **KD_AXES_HELP,
    "recipe": "only when one method ran with several recipes: a short hash of the configuration "
    "without seed and paths, keeping them apart",
    **STATS_HELP,
    "metric": "best_acc (the best epoch's test accuracy) or last_acc (the last epoch's), over "
    "completed experiments (seeds)",
    "n": "completed experiments (seeds) of the group",
}

KD_GAINS_COLUMNS: tuple[str, ...] = (
    *KD_AXES,
    "metric",
    "n",
    "n_alone",
    "alone_mean",
    "gain",
    "ci_low",
    "ci_high",
)
KD_GAINS_HELP: dict[str, str] = {
    **KD_AXES_HELP,
    "metric": " or ".join(KD_METRICS) + " (best and last epoch's test accuracy)",
    "n": "completed seeds of the distilled student",
    "n_alone": "completed seeds of the same student trained alone on the same dataset",
    "alone_mean": "mean of the metric over the student trained alone",
    "gain": "mean(distilled) - mean(alone)",
    "ci_low": "lower end of the bootstrap interval of the gain (both groups resampled "
    "independently); empty when both groups have one seed",
    "ci_high": "upper end of that interval",
}

KD_BENCHMARK_COLUMNS: tuple[str, ...] = BENCHMARK_COLUMNS
_TOP1 = "top-1 accuracy (%) over completed seeds"
KD_BENCHMARK_HELP: dict[str, str] = {
    "dataset": "the dataset",
    "teacher": "the pair's teacher model",
    "student": "the pair's student model",
    "method": "teacher or student (each trained alone), else the experiment's label or method "
    "(with [recipe] when one method ran with several recipes)",
    "n": "completed experiments (seeds) of the cell",
    "best_top1": f"mean best-epoch {_TOP1}",
    "best_std": "standard deviation over seeds of the best-epoch top-1",
    "best_ci_low": "lower end of the bootstrap CI of the best-epoch mean",
    "best_ci_high": "upper end of that interval",
    "last_top1": f"mean last-epoch {_TOP1}",
    "last_std": "standard deviation over seeds of the last-epoch top-1",
    "last_ci_low": "lower end of the bootstrap CI of the last-epoch mean",
    "last_ci_high": "upper end of that interval",
    "published_top1": "the published top-1 (%) of the same pair and method, empty when no "
    "table has it (`sublim.analysis.published`: the source whose recipe the method follows)",
    "published_epoch": "the epoch the published number reports: last (RepDistiller) or best "
    "(mdistiller, ReviewKD and their lineage)",
    "published_table": "the published table, e.g. `RD-1 same-arch`, `MD DKD CIFAR-1`",
    "published_source": "the repository file and commit (or page) the number was read from",
    "diff": "ours at the published number's epoch minus the published number (points)",
}
