"""The runnable code blocks of a documentation page, and how CI runs them at small scale.

Every ```sh / ```bash / ```python block of a tutorial (and of the getting-started page) is
executed, in order, in one fresh directory per page (with `figures/` and `notebooks/` linked
from the repository, and sublim's venv first on PATH), so a tutorial cannot rot. An HTML comment
on the line just before a block, invisible on the site, changes that:

    <!-- test: skip (why) -->                       not run (a cluster, a GPU, a full-size run)
    <!-- test: replace "--epochs 20" with "--epochs 1"; replace "0..19" with "0..1" -->
                                                    run with these textual substitutions
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE = {"sh": "bash", "bash": "bash", "console": None, "python": "python"}

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w-]*)(?P<rest>.*)$")
_MARK = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
_REPLACE = re.compile(r'replace\s+"(?P<old>(?:[^"\\]|\\.)*)"\s+with\s+"(?P<new>(?:[^"\\]|\\.)*)"')


@dataclass
class Snippet:
    """One runnable block: where it is, its language, its text as CI runs it."""

    page: str
    line: int
    lang: str
    code: str
    skip: str | None = None
    replacements: list[tuple[str, str]] = field(default_factory=list)

    def scaled(self) -> str:
        """The code with the page's small-scale substitutions applied (each must match)."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise AssertionError(
                    f"{self.page}:{self.line}: replace {old!r}: not in the block it marks"
                )
            code = code.replace(old, new)
        return code


def snippets(path: Path) -> list[Snippet]:
    """The code blocks of one Markdown page with their test marks."""
    lines = path.read_text().splitlines()
    out: list[Snippet] = []
    i = 0
    rel = str(path.relative_to(ROOT))
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m["fence"], m["lang"].lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        indent = len(m["indent"])
        body = "\n".join(line[indent:] for line in lines[i + 1 : j])
        i = j + 1
        if lang not in RUNNABLE or RUNNABLE[lang] is None:
            continue
        mark = _MARK.match(lines[start - 1]) if start else None
        snippet = Snippet(rel, start + 1, RUNNABLE[lang], body)
        if mark:
            text = mark["body"]
            if text.startswith("skip"):
                snippet.skip = text[4:].strip(" ()") or "marked skip"
            snippet.replacements = [
                (r["old"].replace('\\"', '"'), r["new"].replace('\\"', '"'))
                for r in _REPLACE.finditer(text)
            ]
            if not snippet.skip and not snippet.replacements:
                raise AssertionError(f"{rel}:{start}: unknown test mark {text!r}")
        out.append(snippet)
    return out


def tutorial_pages() -> list[Path]:
    """The pages whose commands CI executes."""
    return [DOCS / "getting-started.md", *sorted((DOCS / "tutorials").glob("[0-9]*.md"))]
