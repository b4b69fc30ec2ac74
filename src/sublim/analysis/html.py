"""A self-contained HTML report: tables, figures (PNG embedded as data URIs), configs, versions.

Nothing is loaded from elsewhere (no scripts, fonts or style sheets by URL), so the file opens
in a browser from disk, offline, and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclass
class Section:
    """One sweep's part of the report."""

    title: str
    table: pd.DataFrame
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG bytes)
    constant: dict[str, object] = field(default_factory=dict)  # config fields equal in all runs
    varying: dict[str, list[object]] = field(default_factory=dict)  # field -> distinct values
    n_runs: int = 0
    note: str = ""  # what the table's cells mean, when they are not the summary's


def table_html(frame: pd.DataFrame) -> str:
    """An escaped HTML table of text cells."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for raw in frame.itertuples(index=False):
        row = ["-" if v is None or (isinstance(v, float) and v != v) else str(v) for v in raw]
        cells = "".join(
            f'<td class="num">{html.escape(v)}</td>'
            if _numberish(v)
            else f"<td>{html.escape(v)}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _numberish(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] == "-" and text[1:2].isdigit())


def _image(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(caption, quote=True)
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render_html(
    title: str,
    sections: Sequence[Section],
    versions: dict[str, str],
    notes: Sequence[str] = (),
    tracking: Sequence[dict[str, str]] = (),
) -> str:
    """The whole report as one HTML document; `tracking` (the entries of the output
    directory's tracking.json) adds links to where the runs were tracked."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    if tracking:
        parts.append(tracking_html(tracking))
    if len(sections) > 1:
        items = "".join(
            f'<li><a href="#s{i}">{html.escape(s.title)}</a> ({s.n_runs} runs)</li>'
            for i, s in enumerate(sections)
        )
        parts.append(f"<ul>{items}</ul>")
    for i, section in enumerate(sections):
        parts.append(f'<h2 id="s{i}">{html.escape(section.title)}</h2>')
        parts.append(f'<p class="note">{section.n_runs} runs.</p>')
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        for caption, png in section.figures:
            parts.append(_image(caption, png))
        parts.append("<h3>Summary</h3>")
        parts.append(table_html(section.table))
        if section.varying:
            varying = pd.DataFrame(
                [(k, ", ".join(map(_short, v))) for k, v in section.varying.items()],
                columns=["varies", "values"],
            )
            parts.append("<h3>Configuration</h3>")
            parts.append(table_html(varying))
        if section.constant:
            text = json.dumps(section.constant, indent=1, sort_keys=True, default=str)
            parts.append("<details><summary>fields common to all runs</summary>")
            parts.append(f"<pre>{html.escape(text)}</pre></details>")
    versions_frame = pd.DataFrame(list(versions.items()), columns=["software", "version"])
    parts += ["<h2>Software</h2>", table_html(versions_frame), "</body></html>"]
    return "\n".join(parts)


def tracking_html(entries: Sequence[dict[str, str]]) -> str:
    """Where the runs were tracked: a link to each location (an http(s) URI as it is, a local
    store or log directory as a file link) and the command that opens it."""
    items = []
    for e in entries:
        loc = str(e.get("location", ""))
        if loc.startswith(("http://", "https://")):
            href = loc
        else:
            path = loc.split(":///", 1)[1] if ":///" in loc else loc
            href = "file://" + ("" if path.startswith("/") else "/") + path
        items.append(
            f"<li>{html.escape(str(e.get('kind', '')))} ({html.escape(str(e.get('group', '')))}):"
            f' <a href="{html.escape(href, quote=True)}">{html.escape(loc)}</a>'
            f" <code>{html.escape(str(e.get('open', '')))}</code></li>"
        )
    return f'<h2 id="tracking">Tracking</h2><ul>{"".join(items)}</ul>'


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
