"""`sublim kd analyze PATH`: flags -> kd.analyze (layer quality) and kd.cka (--against)."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .args import parse_int


def _count(flag: str, text: str | None, minimum: int) -> int | None:
    value = parse_int(flag, text, optional=True)
    if value is not None and value < minimum:
        raise ConfigError(flag, value, f"expected an integer >= {minimum}")
    return value


def cmd_analyze(ns: argparse.Namespace) -> int:
    """Analyse one model (validating every flag and the path before any data is read)."""
    from ..kd.analyze import Settings, analyze, find_target, top_by

    settings = Settings(
        seed=_count("--seed", ns.seed, 0) or 0,
        probe=ns.probe,
        per_class_a=_count("--per-class-a", ns.per_class_a, 2),
        per_class_b=_count("--per-class-b", ns.per_class_b, 2),
        limit=_count("--limit", ns.limit, 1),
    )
    top_k = _count("--top-k", ns.top_k, 1) or 4
    samples = _count("--cka-samples", ns.cka_samples, 2) or 1000
    where = {"dataset": ns.dataset, "data_dir": ns.data_dir, "limit": settings.limit}
    target = find_target(ns.path, **where)
    teacher = None
    if ns.against is not None:
        try:
            teacher = find_target(ns.against, dataset=target.data.dataset, data_dir=ns.data_dir)
        except ConfigError as exc:
            raise ConfigError("--against", exc.value, exc.allowed) from None

    def warn(message: str) -> None:
        sys.stderr.write(f"sublim: warning: {target.model}: {message}\n")

    result = analyze(target, settings, device=ns.device, top_k=top_k, warn=warn)
    verb = "cached" if result.cached else f"analysed in {result.seconds:.1f} s"
    rows = result.rows
    print(f"{target.model} on {target.data.dataset}: {len(rows)} layers, {verb} | {result.csv}")
    print(
        f"top {min(top_k, len(rows))} by Q (the reference's): {top_by(rows, 'q', top_k)}; "
        f"by corrected Q: {top_by(rows, 'q_corrected', top_k)}"
    )
    for row in rows:
        print(
            f"{row['index']:>4}  {row['name']:<28} S {row['s']:7.4f}  I {row['i']:7.4f}  "
            f"E {row['e']:7.4f}  Q {row['q']:7.4f}  Q corrected {row['q_corrected']:7.4f}"
        )
    if teacher is not None:
        from ..kd.cka import compare

        cmp = compare(target, teacher, samples=samples, seed=settings.seed, device=ns.device)
        best = cmp.cka.argmax(1).tolist()
        pairs = ", ".join(
            f"{s}->{cmp.teacher_layers[j][0]}"
            for (s, _), j in zip(cmp.student_layers, best, strict=True)
        )
        print(f"CKA against {teacher.model}: most similar teacher layer per student layer: {pairs}")
        print(f"wrote {cmp.csv} and {cmp.png}")
    return 0
