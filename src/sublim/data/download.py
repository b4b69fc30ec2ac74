"""Download one file from a list of mirrors, verified and atomic; checksum helpers.

A file is streamed into a temporary file beside its destination, checked (length and digest)
and only then renamed into place, so `dest` never holds a partial or unverified download.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sublim.errors import DataError

_CHUNK = 1 << 16


def _as_tuple(checksum: str | Sequence[str] | None) -> tuple[str, ...]:
    if checksum is None:
        return ()
    return (checksum,) if isinstance(checksum, str) else tuple(checksum)


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split "sha256:<hex>" into (algorithm, lower-case hex); rejects unknown algorithms."""
    algo, sep, digest = checksum.partition(":")
    algo = algo.strip().lower()
    if not sep or algo not in hashlib.algorithms_guaranteed or not digest.strip():
        raise ValueError(f"checksum {checksum!r} is not '<algorithm>:<hex>' (e.g. sha256:...)")
    return algo, digest.strip().lower()


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_mismatch(path: Path, checksum: str | Sequence[str] | None) -> tuple[str, str] | None:
    """None if the file matches any of the digests, else (expected, actual) for the message."""
    expected = [parse_checksum(c) for c in _as_tuple(checksum)]
    if not expected:
        return None
    actual = {algo: file_digest(path, algo) for algo in dict.fromkeys(a for a, _ in expected)}
    if any(actual[algo] == digest for algo, digest in expected):
        return None
    first = expected[0][0]
    return " or ".join(f"{a}:{d}" for a, d in expected), f"{first}:{actual[first]}"


@dataclass(frozen=True)
class Failure:
    """Why one mirror did not deliver the file."""

    url: str
    reason: str


class DownloadError(DataError):
    """Every mirror failed; `failures` holds each mirror's reason."""

    def __init__(self, message: str, failures: Sequence[Failure]) -> None:
        super().__init__(message)
        self.failures = tuple(failures)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fetch(url: str, tmp: Path, expected: tuple[str, ...], progress: bool, timeout: float) -> None:
    """Stream `url` into `tmp` and check its length and digest; raises on any problem."""
    hashers = {algo: hashlib.new(algo) for algo, _ in map(parse_checksum, expected)}
    request = urllib.request.Request(url, headers={"User-Agent": "sublim"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(url).name,
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise ConnectionError(f"interrupted transfer: got {received} of {total} bytes")
    if expected:
        parsed = [parse_checksum(c) for c in expected]
        if not any(hashers[algo].hexdigest() == digest for algo, digest in parsed):
            algo, digest = parsed[0]
            actual = hashers[algo].hexdigest()
            raise ValueError(f"checksum mismatch: expected {algo}:{digest}, got {algo}:{actual}")


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return _one_line(error.reason)
    if isinstance(error, http.client.IncompleteRead):
        return f"interrupted transfer: got {len(error.partial)} bytes, {error.expected} missing"
    return _one_line(error) or type(error).__name__


def download_file(
    urls: Sequence[str],
    dest: Path,
    checksum: str | Sequence[str] | None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Fetch `dest` from the first mirror that delivers it intact; DownloadError if none does.

    `checksum` is one digest ("sha256:<hex>", "md5:<hex>"), several accepted ones, or None.
    """
    dest = Path(dest)
    expected = _as_tuple(checksum)
    for c in expected:
        parse_checksum(c)  # a malformed digest is a bug in the registry, not a mirror failure
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"--data-dir: cannot create {dest.parent} to download {dest.name}: {e.strerror or e}"
        ) from e
    failures: list[Failure] = []
    for url in urls:
        try:
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as e:
            raise DataError(
                f"--data-dir: cannot write in {dest.parent} to download {dest.name}: "
                f"{e.strerror or e}"
            ) from e
        os.close(fd)
        tmp, done = Path(name), False
        try:
            _fetch(url, tmp, expected, progress, timeout)
            os.replace(tmp, dest)
            done = True
            return dest
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(Failure(url, _reason(e)))
            print(f"sublim: warning: download of {url} failed: {_reason(e)}", file=sys.stderr)
        finally:
            if not done:
                tmp.unlink(missing_ok=True)
    tried = "; ".join(f"{f.url}: {f.reason}" for f in failures) or "no mirror given"
    raise DownloadError(
        f"--data-dir: could not download {dest.name} ({tried}); "
        f"download it by hand and put it at {dest}",
        failures,
    )


REPLACE_FIX = "delete it so it is downloaded again, or replace it with a good copy"


def why_missing(failures: Sequence[Failure] | None) -> str:
    """Why a file is missing: downloading disabled (None) or each mirror's failure."""
    if failures is None:
        return "downloading is disabled"
    return "download failed (" + "; ".join(f"{f.url}: {f.reason}" for f in failures) + ")"


def obtain_file(
    path: Path,
    urls: Sequence[str],
    checksum: str | Sequence[str] | None,
    download: bool,
    progress: bool,
    missing: Callable[[Sequence[Failure] | None], DataError],
) -> None:
    """Make sure `path` holds a file matching `checksum`: verify a present copy, else download it.

    When the file can be neither found nor downloaded, raises `missing(None)` (downloading is
    disabled) or `missing(failures)` (every mirror failed), so each dataset words its own hint.
    """
    if path.is_file():
        try:
            mismatch = checksum_mismatch(path, checksum)
        except OSError as e:
            raise DataError(f"--data-dir: cannot read {path}: {e.strerror or e}") from e
        if mismatch is not None:
            raise DataError(
                f"--data-dir: {path} fails its checksum (expected {mismatch[0]}, "
                f"got {mismatch[1]}); {REPLACE_FIX}"
            )
    elif not download:
        raise missing(None)
    else:
        try:
            download_file(urls, path, checksum, progress)
        except DownloadError as e:
            raise missing(e.failures) from e
