"""What every output file holds and what each of its columns means (the documentation's
reference page is generated from this package; a test holds it to the files sublim writes).

It sits at the top of the import graph, beside `cli`: it reads the column lists of the store,
the KD training loop, `kd analyze` and the report, and nothing in sublim imports it.

`COLUMN_HELP` gives the meaning of every column of the result CSVs of `sublim run` and
`sublim sweep` (from `outputs.runs`); `OUTPUT_FILES` lists every file sublim writes, in the
order of the reference page, with its columns or keys where it has them and, in `help`, the
meanings of names that are not result-CSV columns (from `outputs.runs` and `outputs.kd`).
Column lists that live in code are imported from there, never repeated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..store.schema import LAYER_METRICS_COLUMNS, PERTURBATION_COLUMNS, RUNS_COLUMNS
from . import kd, runs


@dataclass(frozen=True)
class OutputFile:
    """One output file: its path pattern, what it holds, its columns (or keys), in order, and
    meanings that differ from the shared COLUMN_HELP for the same name."""

    name: str
    what: str
    columns: Sequence[str] = ()
    help: Mapping[str, str] = field(default_factory=dict)


def _merge(*tables: Mapping[str, str]) -> dict[str, str]:
    """One table from several; a name given two different meanings is an error (give it a
    per-file `help` instead)."""
    out: dict[str, str] = {}
    for table in tables:
        for name, text in table.items():
            if out.get(name, text) != text:
                raise ValueError(f"column {name!r} has two meanings; give one per file")
            out[name] = text
    return out


# perturbations.csv's layer_name means the perturbed layer, not the compared one
_PERTURBATION_OWN = {"layer_name": runs.PERTURBATION_HELP["layer_name"]}

COLUMN_HELP: dict[str, str] = _merge(
    runs.SHARED_HELP,
    runs.RUNS_HELP,
    runs.ALIAS_HELP,
    runs.RUNS_EXTRA_HELP,
    runs.LAYER_METRICS_HELP,
    {k: v for k, v in runs.PERTURBATION_HELP.items() if k not in _PERTURBATION_OWN},
)

# sublim's addition to layer_metrics.csv and perturbations.csv, after the reference's columns
CHILD_EXTRA_COLUMNS: tuple[str, ...] = ("config_hash",)

_FORMAT = (
    "Floats have 12 significant digits, NaN is `nan`, lists and dicts are JSON, booleans 0/1. "
    "Each run appends its rows to every file at once (a journal makes it all or nothing, even "
    "if the process is killed); a file whose header lacks a new column is rewritten with the "
    "widened header."
)

OUTPUT_FILES: list[OutputFile] = [
    # ------------------------------------------------------------- sublim run / sublim sweep
    OutputFile(
        "<outdir>/seed_<seed>/runs.csv",
        "`sublim run` and `sublim sweep`: one row per run (`seed_<seed>` has 6 digits, e.g. "
        "`seed_000042`): configuration, derived seeds, accuracies, losses and compact copies of "
        "the head comparisons of layer_metrics.csv. The reference's columns come first, in its "
        "order, then sublim's additions. " + _FORMAT,
        (*RUNS_COLUMNS, *runs.RUNS_EXTRA_COLUMNS),
    ),
    OutputFile(
        "<outdir>/seed_<seed>/layer_metrics.csv",
        "One row per comparison, layer and tensor kind (weight, bias): the four comparisons "
        "(teacher vs student at initialisation and at the end, each model's initial vs final "
        "state) over the union of the two models' layer names, plus the teacher-student "
        "representational similarity of every hidden layer.",
        (*LAYER_METRICS_COLUMNS, *CHILD_EXTRA_COLUMNS),
    ),
    OutputFile(
        "<outdir>/seed_<seed>/perturbations.csv",
        "One row per perturbation spec and layer it selects, in timing order (just the header "
        "when the run has no `--perturb`).",
        (*PERTURBATION_COLUMNS, *CHILD_EXTRA_COLUMNS),
        _PERTURBATION_OWN,
    ),
    OutputFile(
        "<outdir>/seed_<seed>/configs.jsonl",
        "One JSON object per run and line: its effective configuration, resolved layer "
        "configs, architectures and derived seeds. The keys:",
        runs.CONFIGS_KEYS,
        runs.CONFIGS_HELP,
    ),
    OutputFile(
        "<outdir>/runs_all_seeds.csv, layer_metrics_all_seeds.csv, perturbations_all_seeds.csv",
        "With `--append-global` (`sublim sweep` always): every row of the per-seed files above "
        "is also appended here, in the same transaction, with the same columns: one file of "
        "each kind for all seeds. `sublim report` counts a run found in both once.",
    ),
    OutputFile(
        "<outdir>/seed_<seed>/diagnostics/<run_id>.npz",
        "With `--diagnostics`: what `sublim report` plots for a run (training curves, sample "
        "predictions, aux outputs on noise), as numpy arrays; read with "
        "`numpy.load(path, allow_pickle=False)`. The arrays:",
        runs.DIAGNOSTICS_ARRAYS,
        runs.DIAGNOSTICS_HELP,
    ),
    OutputFile(
        "<outdir>/seed_<seed>/models/<run_id>/teacher_init.pt, teacher.pt, student.pt",
        "With `--save-models`: the initial teacher, the trained teacher (as its stage left it, "
        "before any student-stage perturbation) and the trained student; runs.csv's `models_dir` "
        "points here. Each is a dict saved with `torch.save`; read it with "
        "`torch.load(path, weights_only=True)`, or rebuild the model with "
        "`sublim.engine.checkpoint.load_model(path)`. A teacher.pt is what "
        "`--teacher-checkpoint` reads. The keys:",
        runs.MODEL_KEYS,
        runs.MODEL_HELP,
    ),
    OutputFile(
        "<outdir>/teachers/<key>.pt",
        "`sublim sweep` only: a cache of each distinct trained teacher (the key hashes "
        "everything the teacher stage depends on), so the runs that share a teacher train it "
        "once and a rerun reuses it. Internal; deleting the folder only costs retraining.",
    ),
    OutputFile(
        "<outdir>/tracking.json",
        "With `--track` (`sublim run`, `sweep` and `kd`): where the work was tracked "
        "(TensorBoard folders, MLflow stores, each with the command that opens it; `sublim "
        "report --html` lists them) and, for runs and sweeps, the MLflow parent runs that a "
        "rerun continues.",
    ),
    OutputFile(
        "<outdir>/.sublim.lock, <outdir>/.sublim.journal, <experiment>/.sublim.lock",
        "Machinery of the writer, never to be edited. `.sublim.lock` is the writer lock "
        "(an OS file lock, released when the process ends, even if it dies; the file itself "
        "stays and names the last holder): a second writer to the directory waits (`sublim "
        "run`, up to 2 minutes) or is refused (`sublim sweep`), never interleaving rows. "
        "`.sublim.journal` exists only while a run's rows are being written, or after a writer "
        "was killed mid-write: the next writer to open the directory completes that write from "
        "it, so a run's rows appear in every file or in none. A KD experiment's `.sublim.lock` "
        "lets one process at a time train it.",
    ),
    # ------------------------------------------------------------------------------ sublim kd
    OutputFile(
        "<outdir>/<dataset>/<method>/<teacher>_to_<student>/seed_<seed>_<hash>/",
        "`sublim kd train-teacher`, `distill` and `sweep`: one directory per experiment, named "
        "by the first 8 hex digits of its config hash. Teachers, and students trained alone "
        "(`--method none`), live under `<outdir>/<dataset>/teacher/<model>/`. The directory "
        "holds config.json, status.json, metrics.json, last.pt and best.pt, each rewritten "
        "atomically after every epoch (a killed process leaves the previous epoch's files, and "
        "rerunning the command resumes from them; a completed experiment is skipped), plus "
        "what `sublim kd analyze` and `--track` add.",
    ),
    OutputFile(
        "<experiment>/config.json",
        "The experiment's configuration: `config_hash`, then every KDConfig field (listed with "
        "its meaning on the [Sweep specs](spec.md) page), as one JSON object.",
    ),
    OutputFile(
        "<experiment>/status.json",
        "Where the experiment stands, rewritten after every epoch (keys in the file are sorted "
        "alphabetically; the `completed only` and `failed only` keys appear in those states; a "
        "failure keeps the progress keys it had). The keys:",
        kd.STATUS_KEYS,
        kd.STATUS_HELP,
    ),
    OutputFile(
        "<experiment>/metrics.json",
        "The training history: one list per key with one entry per finished epoch (init-stage "
        "epochs first), rewritten after every epoch. The keys:",
        kd.METRICS_KEYS,
        kd.METRICS_HELP,
    ),
    OutputFile(
        "<experiment>/last.pt",
        "Everything needed to resume exactly where the last epoch ended, rewritten after "
        "every epoch (a dict saved with `torch.save`). The keys:",
        kd.LAST_KEYS,
        kd.LAST_HELP,
    ),
    OutputFile(
        "<experiment>/best.pt",
        "The model at its best main-stage test accuracy (rewritten when a new best is reached); "
        "what a student's teacher, `sublim kd analyze` and `--against` read. The keys:",
        kd.BEST_KEYS,
        kd.BEST_HELP,
    ),
    OutputFile(
        "<experiment>/layer_quality.csv",
        '`sublim kd analyze PATH` (and `teacher_layers = "auto:METRIC"`, which analyses the '
        "teacher): one row per generalized layer, ascending, beside the analysed best.pt. The "
        "reference's S, I, E, Q first, then the corrected versions and the terms they are made "
        "of. Sets A and B are class-balanced subsets of the model's training split, drawn from "
        "`--seed`. `probe_acc` is there with `--probe` only.",
        kd.QUALITY_COLUMNS,
        kd.QUALITY_HELP,
    ),
    OutputFile(
        "<experiment>/layer_quality.json",
        "The cache key of layer_quality.csv: a rerun whose key is equal reads the CSV instead "
        "of analysing again. The keys:",
        kd.QUALITY_KEY_KEYS,
        kd.QUALITY_KEY_HELP,
    ),
    OutputFile(
        "<experiment>/layer_quality.png",
        "S, I, E and Q of every layer against its index, the `--top-k` best layers by Q marked.",
    ),
    OutputFile(
        "<experiment>/cka_<teacher>.csv, cka_<teacher>.png",
        "`sublim kd analyze PATH --against TEACHER`: linear CKA between every layer of the "
        "analysed model and every layer of the other, one row per pair (the PNG draws it as a "
        "heat map).",
        kd.CKA_COLUMNS,
        kd.CKA_HELP,
    ),
    OutputFile(
        "<experiment>/tracking.json",
        "With `--track`: the experiment's tracked run ids and last logged epoch per backend, so "
        "that a resumed experiment continues the same tracked runs.",
    ),
    # -------------------------------------------------------------------------- sublim report
    OutputFile(
        "<outdir>/report/summary.csv",
        "`sublim report` (written under `--out` when given): one row per group and metric over "
        "the `sublim run`/`sweep` runs found; `summary.txt` is the same as a readable table "
        "(mean [ci_low, ci_high] per metric), also printed.",
        kd.SUMMARY_COLUMNS,
        kd.SUMMARY_HELP,
    ),
    OutputFile(
        "<outdir>/report/kd_summary.csv",
        "When `sublim kd` experiments are found: one row per dataset, teacher -> student pair, "
        "method and metric, over the completed experiments (seeds).",
        kd.KD_SUMMARY_COLUMNS,
        kd.KD_SUMMARY_HELP,
    ),
    OutputFile(
        "<outdir>/report/kd_gains.csv",
        "When a distilled student and the same student trained alone were both found: the gain "
        "of each method over the student alone.",
        kd.KD_GAINS_COLUMNS,
        kd.KD_GAINS_HELP,
    ),
    OutputFile(
        "<outdir>/report/kd_benchmark.csv",
        "When KD experiments of teacher -> student pairs were found: the benchmark table, one "
        "row per dataset, pair and method (the teacher and the student alone as rows `teacher` "
        "and `student`), in percent, with the published number beside ours. "
        "`kd_benchmark.md` is the same in the papers' layout (methods as rows, pairs as "
        "columns: ours at the last and the best epoch, published, diff), also in the HTML.",
        kd.KD_BENCHMARK_COLUMNS,
        kd.KD_BENCHMARK_HELP,
    ),
    OutputFile(
        "<outdir>/report/*.png (and .svg, .pdf with --format)",
        "The figures: `figure<N>.png` (the paper's figure N, for sweeps named fig2..fig6 or "
        "with `--figure`; `figure<N>_<metric>` for another `--metric`), "
        "`<sweep>_<metric>_vs_<axis>` (generic plots), `<sweep>_layers`, `<sweep>_layers_cka` and "
        "`<sweep>_layers_rsa` (teacher-student weight cosine, linear CKA and RSA per layer), "
        "`diagnostics_<run_id>_curves`, `_predictions` and `_aux` (runs with `--diagnostics`), "
        "`kd_<dataset>` and `kd_gains` (KD experiments), "
        "`layer_quality_<dataset>_<model>_<experiment folder>` and `layer_quality_depth` "
        "(models analysed by `sublim kd analyze`).",
    ),
    OutputFile(
        "<outdir>/report/report.html",
        "With `--html`: one self-contained page (figures embedded, no external links or "
        "scripts) with the tables, the figures, each sweep's configuration (what varies and "
        "what is common), the software versions and where runs were tracked.",
    ),
    # ---------------------------------------------------------------------------- sublim data
    OutputFile(
        "<data-dir>/...",
        "`sublim data` and any command that needs a missing dataset: the official files, "
        "downloaded into `--data-dir` (each checked against its checksum and moved into place "
        "only when complete). MNIST is bundled and never downloaded.",
    ),
]
