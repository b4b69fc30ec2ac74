"""What each column of `sublim run` / `sublim sweep`'s files means, one line per column.

The reference's meanings come from spec/REFERENCE.md, sublim's additions from the code that
fills them (`engine.run`, `engine.metrics`, `engine.perturb`, `engine.similarity`). The compact
alias columns are described from the same tables that name them (`records.ALIAS_*`), so a new
alias is described as soon as it exists. Torch-free, like the rest of `sublim.store`.
"""

from __future__ import annotations

from ..store.schema import (
    ALIAS_COMPARISONS,
    ALIAS_HEADS,
    ALIAS_METRICS,
    ALIAS_TENSORS,
    PERTURBATION_STAT_FIELDS,
    SCHEMA_VERSION,
    alias_column,
)

# ---------------------------------------------------------------------------------------------
# Columns shared by runs.csv, layer_metrics.csv and perturbations.csv (and their *_all_seeds)
# ---------------------------------------------------------------------------------------------

SHARED_HELP: dict[str, str] = {
    "schema_version": f"version of the column layout the row was written with ({SCHEMA_VERSION})",
    "run_id": "unique id of the run: its UTC timestamp as YYYYMMDDTHHMMSS, a dash and 10 random "
    "hex digits; joins a run's rows across all files",
    "seed": "base seed of the run (`--seed`); every random stream is derived from it; also names "
    "the per-seed directory seed_<6 digits>",
    "sweep_name": "the sweep's name (a spec's `name`, or `--sweep-name`; `default` for a plain "
    "`sublim run`)",
    "run_label": "free-form label of the run (`--run-label`, or a spec's `label` template); "
    "empty when none was given",
    "config_hash": "16 hex digits hashing every config field that changes results (not paths, "
    "labels or the device; equivalent spellings hash the same): `sublim sweep` skips runs whose "
    "hash is already in runs.csv",
}

# ---------------------------------------------------------------------------------------------
# runs.csv: the reference's columns, in its order
# ---------------------------------------------------------------------------------------------

RUNS_HELP: dict[str, str] = {
    "timestamp": "UTC time the run's record was made, at its end (ISO 8601, seconds)",
    "runtime_seconds": "wall-clock seconds the run took, data loading included (runs that a "
    "sweep trains together in one stack get the stack's time divided evenly)",
    "rng_base": "the base seed every derived seed below comes from (equal to seed)",
    "teacher_model_seed": "seed of the teacher's own initialisation, used by its `random` "
    "layers (derived from the base seed and the role)",
    "student_model_seed": "seed of the student's own initialisation, used by its `random` "
    "layers (derived from the base seed and the role)",
    "teacher_training_seed": "seed derived for the purpose `teacher_training`, recorded as the "
    "reference records it (the teacher's batch order is drawn from the `dataloader` purpose)",
    "student_training_seed": "seed of the student's training noise stream (purpose "
    "`student_noise`; noise batch k is drawn from (base seed, student_noise, k))",
    "dataloader_seed": "seed derived for the purpose `dataloader`, from which the teacher's "
    "shuffling of the labelled training set is drawn (one permutation per epoch)",
    "torch_version": "PyTorch version that ran the run",
    "cuda_available": "whether PyTorch saw a CUDA device on the machine (0/1), whatever "
    "`--device` chose",
    "device": "device the run ran on (`cpu`, `cuda`, `cuda:N`, `mps`), `--device auto` resolved",
    "dataset": "dataset name (`--dataset`: mnist, fashion-mnist, kmnist, emnist, cifar10, "
    "image-folder)",
    "emnist_split": "EMNIST split (`--emnist-split`); empty for other datasets",
    "train_size": "number of labelled training images the teacher trained on (after class "
    "selection)",
    "test_size": "number of test images every accuracy and class loss is measured on (after "
    "class selection)",
    "num_classes": "number of classes K the class heads predict, after `--class-count` or "
    "`--classes`",
    "data_dir": "the dataset directory as given (`--data-dir`)",
    "outdir": "the output root as given (`--outdir`)",
    "teacher_type": "teacher model family: mlp or cnn",
    "student_type": "student model family: mlp or cnn",
    "teacher_hidden_dims": "teacher's hidden widths as a JSON list (for the default CNN the last "
    "value is fc1's width)",
    "student_hidden_dims": "student's hidden widths as a JSON list (for the default CNN the last "
    "value is fc1's width)",
    "teacher_arch_description": "one-line description of the teacher: input shape, then every "
    "layer with its kind, activation and width, e.g. `mlp in 1x28x28; fc1 linear relu -> 256; "
    "...; aux_head 256->10`",
    "student_arch_description": "one-line description of the student, in the teacher's format",
    "teacher_layer_names": "teacher's layer names in order, as a JSON list (fc1..fcN or the CNN "
    "spec's names, then class_head and aux_head; `head` with `--head-layout single`)",
    "student_layer_names": "student's layer names in order, as a JSON list",
    "m": "output dimension of the aux head (the distilled, ghost logits)",
    "teacher_epochs": "epochs of teacher training on the labelled set",
    "student_epochs": "epochs of student training on noise",
    "data_bsize": "teacher's batch size on the labelled training set",
    "noise_bsize": "student's noise batch size",
    "noise_steps": "noise batches per student epoch (unused when noise_pool > 0)",
    "teacher_lr": "teacher's Adam learning rate",
    "student_lr": "student's Adam learning rate",
    "noise_dist": "distribution of the student's noise inputs: uniform (U[-1, 1]), normal "
    "(N(0, 1)) or perlin (scaled to max |1|)",
    "perlin_res": "Perlin noise grid resolution (used when noise_dist is perlin)",
    "normalize_noise": "whether the dataset's input normalisation was applied to the noise (0/1)",
    "eval_noise_batches": "noise batches of the aux-MSE evaluation (student_*_aux_loss)",
    "eval_noise_bsize": "noise samples per batch of the aux-MSE evaluation",
    "teacher_init_config": "teacher's init source per layer after resolving `--teacher-init`, as "
    'a JSON object, e.g. {"fc1": "A", ..., "aux_head": "A"} (A, B or random)',
    "student_init_config": "student's init source per layer after resolving `--student-init`, "
    "as a JSON object (A, B or random)",
    "teacher_trainable_config": "whether each teacher layer was trainable, as a JSON object "
    "layer -> true/false",
    "student_trainable_config": "whether each student layer was trainable, as a JSON object "
    "layer -> true/false",
    "perturb_specs": "the run's perturbation specs as a JSON list of objects (target, layers, "
    "std, timing, include_weight, include_bias, distribution); [] for none",
    "teacher_total_parameters": "number of parameters of the teacher",
    "student_total_parameters": "number of parameters of the student",
    "teacher_trainable_parameters": "number of teacher parameters in trainable layers",
    "student_trainable_parameters": "number of student parameters in trainable layers",
    "teacher_init_acc": "teacher's test accuracy (argmax of class_head) at initialisation, "
    "after its before_teacher_training perturbations (with `--teacher-checkpoint`, the "
    "checkpoint's value)",
    "teacher_final_acc": "teacher's test accuracy at the end of the run (after any perturbation "
    "of it, including after_student_training ones)",
    "student_init_acc": "student's test accuracy (argmax of class_head) before its training, "
    "after its before_student_training perturbations",
    "student_final_acc": "student's test accuracy after its training and its "
    "after_student_training perturbations: the experiment's main result",
    "teacher_init_class_loss": "teacher's mean test cross-entropy of class_head at initialisation",
    "teacher_final_class_loss": "teacher's mean test cross-entropy of class_head at the end of "
    "the run",
    "student_init_class_loss": "student's mean test cross-entropy of class_head before training",
    "student_final_class_loss": "student's mean test cross-entropy of class_head at the end",
    "student_init_aux_loss": "MSE between the student's and the teacher's aux_head outputs on "
    "the evaluation noise (its `initial` draw), before student training",
    "student_final_aux_loss": "MSE between the student's and the teacher's aux_head outputs on "
    "the evaluation noise (its `final` draw), at the end of the run",
    "teacher_train_loss_last": "teacher's mean training cross-entropy over its last epoch "
    "(with `--teacher-checkpoint`, the value the checkpoint recorded)",
    "student_train_aux_loss_last": "student's mean distillation loss (`--distill-loss`) over its "
    "last epoch",
    "class_count": "K of `--class-count` (labels 0..K-1 kept); empty when not set",
    "class_selection": "class truncation rule (`first`: the first K labels)",
    "base_num_classes": "number of classes of the dataset before any class selection",
}

# Compact aliases: every name is built from these four tables, so is every meaning.
_ALIAS_COMPARISON_TEXT: dict[str, str] = {
    "init_teacher_student": "the teacher (a) and the student (b), both at initialisation",
    "final_teacher_student": "the teacher (a) and the student (b) at the end of the run",
    "student_init_final": "the student at initialisation (a) and at the end (b)",
    "teacher_init_final": "the teacher at initialisation (a) and at the end (b)",
}
_ALIAS_METRIC_TEXT: dict[str, str] = {
    "cos": "cosine similarity",
    "rel_fro": "relative distance ||a - b||_F / ||a||_F",
    "diff_norm": "distance ||a - b||_F",
}
_ALIAS_TENSOR_TEXT: dict[str, str] = {"weight": "weight matrix", "bias": "bias vector"}

ALIAS_HELP: dict[str, str] = {
    alias_column(metric, alias, head, tensor): (
        f"{_ALIAS_METRIC_TEXT[metric]} of the {head} {_ALIAS_TENSOR_TEXT[tensor]} between "
        f"{_ALIAS_COMPARISON_TEXT[alias]}: layer_metrics.csv's `{source}` on its "
        f"{comparison}, {head}, {tensor} row"
    )
    for alias, comparison in ALIAS_COMPARISONS.items()
    for head in ALIAS_HEADS
    for tensor in ALIAS_TENSORS
    for metric, source in ALIAS_METRICS.items()
}

# sublim's additions to runs.csv, after the reference's columns, in the order engine.run writes
# them (config_hash is in SHARED_HELP: every result CSV has it)
RUNS_EXTRA_COLUMNS: tuple[str, ...] = (
    "condition",
    "config_hash",
    "classes",
    "distill_loss",
    "temperature",
    "head_layout",
    "init_scheme",
    "noise_pool",
    "data_mean",
    "data_std",
    "augment",
    "teacher_checkpoint",
    "similarity_samples",
    "image_size",
    "test_fraction",
    "models_dir",
)
RUNS_EXTRA_HELP: dict[str, str] = {
    "condition": "name of the sweep condition the run belongs to (a spec's [conditions.NAME]); "
    "empty for `sublim run`",
    "classes": "original labels kept, as a JSON list in the order they are remapped to "
    "0..K-1 (`--classes`, or 0..K-1 from `--class-count`); empty when all classes are kept",
    "distill_loss": "student's distillation loss on the aux logits: mse, kl or standardized-mse",
    "temperature": "softmax temperature T of `--distill-loss kl` (the loss is scaled by T^2)",
    "head_layout": "split (class_head and aux_head) or single (one `head` whose last m logits "
    "are the distilled ghost logits)",
    "init_scheme": "initialiser of every layer: torch-default (PyTorch's) or normal-fan-in "
    "(weights N(0, 1/sqrt(fan_in)), zero bias)",
    "noise_pool": "0: fresh noise every student step; N: a fixed pool of N noise images, "
    "reshuffled every student epoch",
    "data_mean": "input normalisation mean per channel as a JSON list (`--data-mean`); empty: "
    "the dataset's own constants",
    "data_std": "input normalisation std per channel as a JSON list (`--data-std`); empty: the "
    "dataset's own constants",
    "augment": "affine augmentation of the teacher's training batches in canonical form, e.g. "
    "`rotate=60,crop=2`; empty for none",
    "teacher_checkpoint": "the teacher.pt the student stage started from "
    "(`--teacher-checkpoint`); empty when the teacher was trained in the run",
    "similarity_samples": "test images (a fixed subset drawn from the seed) on which "
    "layer_metrics.csv's linear_cka and rsa were measured; 0: not measured",
    "image_size": "side in pixels images were resized to (`--dataset image-folder` only; empty "
    "otherwise)",
    "test_fraction": "share of images in the hash-chosen test split (`--dataset image-folder` "
    "only; empty otherwise)",
    "models_dir": "with `--save-models`: the run's checkpoint folder, relative to the output "
    "root (`seed_<seed>/models/<run_id>`); empty otherwise",
}

# ---------------------------------------------------------------------------------------------
# layer_metrics.csv
# ---------------------------------------------------------------------------------------------

LAYER_METRICS_HELP: dict[str, str] = {
    "comparison": "which two snapshots are compared: teacher_student_init, "
    "teacher_student_final, teacher_init_final or student_init_final",
    "reference_model": "model of the comparison's reference side (a): teacher or student",
    "other_model": "model of the other side (b): teacher or student",
    "reference_state": "state of the reference side: init (before its training, after its "
    "`before_*` perturbations) or final (at the end of the run)",
    "other_state": "state of the other side: init or final",
    "layer_name": "layer compared (the union of both models' layer names: a layer one model "
    "lacks appears with a missing status)",
    "tensor_kind": "weight or bias",
    "reference_shape": "shape of the reference tensor, e.g. 256x784; empty when it is missing",
    "other_shape": "shape of the other tensor; empty when it is missing",
    "status": "comparable, or why the values are nan: missing_both, `missing_in_<model>`, "
    "`missing_tensor_in_<model>`, shape_mismatch",
    "cosine": "cosine similarity of the two flattened tensors, in float64 (nan when not "
    "comparable or a norm is 0)",
    "diff_norm": "Frobenius norm of the difference ||a - b||_F",
    "reference_norm": "Frobenius norm of the reference tensor ||a||_F",
    "other_norm": "Frobenius norm of the other tensor ||b||_F",
    "relative_diff_reference": "difference relative to the reference: ||a - b||_F / ||a||_F",
    "relative_diff_symmetric": "symmetric relative difference: 2 ||a - b||_F / (||a||_F + ||b||_F)",
    "linear_cka": "linear CKA between the layer's outputs in the teacher the student learns from "
    "and in the student, on `similarity_samples` fixed test images; only on "
    "teacher_student_init/final rows of hidden layers both models have (same value on the "
    "weight and bias rows), nan elsewhere",
    "rsa": "RSA between the same outputs: Pearson correlation of the upper triangles of the two "
    "1 - Pearson-correlation RDMs over the samples; same rows as linear_cka, nan elsewhere",
}

# ---------------------------------------------------------------------------------------------
# perturbations.csv
# ---------------------------------------------------------------------------------------------

_STAT_TEXT: dict[str, str] = {
    "delta_norm": "Frobenius norm of the noise added to the layer's {t} (0 when the {t} was not "
    "included or std = 0)",
    "before_norm": "Frobenius norm of the layer's {t} before the perturbation",
    "after_norm": "Frobenius norm of the layer's {t} after the perturbation",
    "delta_rel": "{t}_delta_norm / {t}_before_norm (nan when the norm before is 0)",
    "before_after_cosine": "cosine similarity of the layer's {t} before and after the perturbation",
}

PERTURBATION_HELP: dict[str, str] = {
    "timing": "when the perturbation was applied: before_teacher_training, "
    "after_teacher_training, before_student_training or after_student_training",
    "target": "the model perturbed: teacher or student",
    "layer_name": "the perturbed layer (one row per spec and layer)",
    "std": "standard deviation of the noise added (absolute, not relative); 0 changes nothing "
    "but still writes its row",
    "include_weight": "whether the layer's weight was perturbed (0/1)",
    "include_bias": "whether the layer's bias was perturbed (0/1)",
    "distribution": "noise distribution (normal: std * N(0, 1))",
    "perturb_seed": "seed of this spec and layer's noise (derived from the base seed, the "
    "spec's index, target, timing and the layer)",
    **{
        f"{tensor}_{stat}": _STAT_TEXT[stat].format(t=tensor) + " (nan if the layer has none)"
        for tensor in ("weight", "bias")
        for stat in PERTURBATION_STAT_FIELDS
    },
}

# ---------------------------------------------------------------------------------------------
# configs.jsonl, diagnostics/<run_id>.npz, models/<run_id>/*.pt
# ---------------------------------------------------------------------------------------------

CONFIGS_KEYS: tuple[str, ...] = (
    "schema_version",
    "run_id",
    "timestamp",
    "config_hash",
    "effective_config",
    "resolved_teacher_init",
    "resolved_teacher_trainable",
    "resolved_student_init",
    "resolved_student_trainable",
    "teacher_arch_description",
    "student_arch_description",
    "teacher_arch_spec",
    "student_arch_spec",
    "seed_info",
)
CONFIGS_HELP: dict[str, str] = {
    "effective_config": "every field of the run's configuration after defaults and sweep "
    "expansion, as an object (the fields listed on the [Sweep specs](spec.md) page)",
    "resolved_teacher_init": "the teacher's init source per layer (A, B or random)",
    "resolved_teacher_trainable": "whether each teacher layer is trainable",
    "resolved_student_init": "the student's init source per layer (A, B or random)",
    "resolved_student_trainable": "whether each student layer is trainable",
    "teacher_arch_spec": "the teacher's normalised CNN layer list (null for an MLP)",
    "student_arch_spec": "the student's normalised CNN layer list (null for an MLP)",
    "seed_info": "every derived seed by purpose: rng_base, teacher_model_seed, "
    "student_model_seed, teacher_training_seed, student_training_seed, dataloader_seed",
}

DIAGNOSTICS_ARRAYS: tuple[str, ...] = (
    "student_history",
    "sample_index",
    "sample_images",
    "sample_labels",
    "sample_teacher_pred",
    "sample_student_pred",
    "noise_teacher_aux",
    "noise_student_aux_init",
    "noise_student_aux_final",
    "class_names",
    "teacher_history",
)
DIAGNOSTICS_HELP: dict[str, str] = {
    "student_history": "float64 [student epochs, 3]: epoch (from 1), mean training "
    "distillation loss, test accuracy after the epoch",
    "sample_index": "int64 [16]: test-set indices of 16 images spread evenly over the test set",
    "sample_images": "uint8 [16, C, H, W]: those images, as stored (not normalised)",
    "sample_labels": "int64 [16]: their labels (0..K-1)",
    "sample_teacher_pred": "int64 [16]: the final teacher's predicted class for each",
    "sample_student_pred": "int64 [16]: the final student's predicted class for each",
    "noise_teacher_aux": "float32 [512, m]: the final teacher's aux outputs on the first 512 "
    "samples of the final evaluation-noise draw",
    "noise_student_aux_init": "float32 [512, m]: the student's aux outputs on the same noise "
    "before its training",
    "noise_student_aux_final": "float32 [512, m]: the student's aux outputs on the same noise "
    "at the end",
    "class_names": "str [K]: name of each label 0..K-1 (folder names, CIFAR-10 names, else the "
    "original label)",
    "teacher_history": "float64 [teacher epochs, 3]: epoch (from 1), mean training "
    "cross-entropy, test accuracy after the epoch; absent when no teacher epoch was recorded "
    "(`--teacher-checkpoint`, or 0 teacher epochs)",
}

MODEL_KEYS: tuple[str, ...] = (
    "format",
    "role",
    "stage",
    "config",
    "layer_names",
    "arch",
    "build",
    "classes",
    "folder_classes",
    "state_dict",
    "metrics",
    "init_state_dict",
)
MODEL_HELP: dict[str, str] = {
    "format": "`sublim-model-1`: the bundle format",
    "role": "teacher or student",
    "stage": "init (teacher_init.pt) or trained (teacher.pt, student.pt)",
    "config": "the run's effective configuration, as plain values",
    "layer_names": "the model's layer names in order",
    "arch": "one-line architecture description (as in runs.csv)",
    "build": "what rebuilds the network without data or paths: spec, in_shape, num_classes, m, "
    "kind, head_layout",
    "classes": "original labels kept, in remapped order (null: all)",
    "folder_classes": "class folder names of an image-folder dataset (null otherwise)",
    "state_dict": "the weights (the trained teacher as its stage left it, before student-stage "
    "perturbations)",
    "metrics": "teacher.pt: teacher_init_acc, teacher_init_class_loss, teacher_train_loss_last; "
    "{} in the other two",
    "init_state_dict": "teacher.pt only: the teacher's initial weights (a run started with "
    "`--teacher-checkpoint` compares its teacher_init rows against them)",
}
