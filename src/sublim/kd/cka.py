"""`sublim kd analyze --against TEACHER`: linear CKA between every student and teacher layer.

Both models see the same seeded, class-balanced subset of the (student's) training split,
un-augmented, in eval mode. Each layer's features are folded into an N x N Gram matrix (column
slices of an oversize layer are summed), passes grouped by `sublim.geometry.plan_passes` so
memory stays within a budget; CKA then compares the Grams (`linear_cka_gram`), so layers of any
width compare. Writes `cka_<teacher>.csv` (long: student_index, student_name, teacher_index,
teacher_name, cka, n, seed) and `cka_<teacher>.png` (heat map) in the student's directory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..store.csvio import atomic_write_bytes
from .analyze import Target, features_fn, load_model

DEFAULT_SAMPLES = 1000
BUDGET = 1 << 30  # bytes of float32 features held per pass


@dataclass
class Comparison:
    """CKA [student layers x teacher layers] and the files written."""

    cka: torch.Tensor
    student_layers: list[tuple[int, str]]
    teacher_layers: list[tuple[int, str]]
    csv: Path
    png: Path


def layer_grams(
    target: Target, images: torch.Tensor, device: torch.device, chunk: int = 256
) -> tuple[list[tuple[int, str]], list[torch.Tensor]]:
    """(index, name) of every generalized layer and its Gram matrix on `images` (uint8)."""
    from ..geometry import plan_passes
    from .data import load_kd_data

    data = load_kd_data(target.data)
    net = load_model(target, device)
    run = features_fn(net, data.mean, data.std, device)
    table = net.layer_table(target.data.input_shape)
    dims = {g.index: int(torch.tensor(g.shape).prod()) for g in table}
    n = images.shape[0]
    grams = {g.index: torch.zeros(n, n, dtype=torch.float64) for g in table}
    for group in plan_passes(dims, n, BUDGET):
        wanted = sorted({s.layer for s in group})
        parts: dict[object, list[torch.Tensor]] = {s: [] for s in group}
        for start in range(0, n, chunk):
            out = run(images[start : start + chunk], wanted)
            for s in group:
                flat = out[s.layer].reshape(out[s.layer].shape[0], -1)[:, s.lo : s.hi]
                parts[s].append(flat.float().cpu())
        for s in group:
            x = torch.cat(parts.pop(s))
            grams[s.layer] += (x @ x.T).double()
    return [(g.index, g.name) for g in table], [grams[g.index] for g in table]


def compare(
    student: Target,
    teacher: Target,
    *,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    device: str = "cpu",
    name: str | None = None,
) -> Comparison:
    """Linear CKA of each student layer with each teacher layer; files in the student's folder."""
    from ..engine.run import resolve_device
    from ..geometry import balanced_subsets, linear_cka_gram
    from .data import load_kd_data

    if student.data.dataset != teacher.data.dataset:
        raise ConfigError(
            "--against",
            str(teacher.out_dir),
            f"trained on {teacher.data.dataset}, the student on {student.data.dataset}",
        )
    data = load_kd_data(student.data)
    classes = student.data.num_classes
    per_class = max(1, samples // classes)
    a, _ = balanced_subsets(data.train_y, classes, seed, per_class_a=per_class, per_class_b=0)
    images = data.train_x[a]
    dev = resolve_device(device)
    s_layers, s_grams = layer_grams(student, images, dev)
    t_layers, t_grams = layer_grams(teacher, images, dev)
    cka = torch.stack([torch.stack([linear_cka_gram(g, h) for h in t_grams]) for g in s_grams])
    stem = f"cka_{name or teacher.model}"
    csv_path = student.out_dir / f"{stem}.csv"
    lines = ["student_index,student_name,teacher_index,teacher_name,cka,n,seed"]
    for (si, sn), row in zip(s_layers, cka.tolist(), strict=True):
        for (ti, tn), value in zip(t_layers, row, strict=True):
            lines.append(f"{si},{sn},{ti},{tn},{value!r},{a.numel()},{seed}")
    atomic_write_bytes(csv_path, ("\n".join(lines) + "\n").encode())
    png_path = student.out_dir / f"{stem}.png"
    _draw(csv_path, png_path, f"CKA: {student.model} (rows) vs {teacher.model} (columns)")
    return Comparison(cka, s_layers, t_layers, csv_path, png_path)


def _draw(csv_path: Path, png_path: Path, title: str) -> None:
    import pandas as pd

    from ..analysis.quality import cka_figure
    from ..analysis.style import close, save

    fig = cka_figure(pd.read_csv(io.StringIO(csv_path.read_text())), title)
    try:
        save(fig, png_path.with_suffix(""), ("png",))
    finally:
        close(fig)
