"""download_file against a real HTTP server on 127.0.0.1: mirrors, checksums, broken transfers."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from quiet_http import QuietServer

from sublim.data.download import DownloadError, download_file
from sublim.errors import DataError

BODY = bytes(range(256)) * 300  # 76.8 kB: several read chunks
SHA256 = "sha256:" + hashlib.sha256(BODY).hexdigest()
MD5 = "md5:" + hashlib.md5(BODY).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (mode, body)`; modes: ok, short, hang. Anything else: 404."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        mode, body = self.server.routes.get(self.path, ("missing", b""))
        if mode == "missing":
            self.send_error(404)
            return
        if mode == "hang":
            time.sleep(1.0)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "short":  # announce the full length, send half, close the connection
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # never route 127.0.0.1 through a proxy
    srv = QuietServer(("127.0.0.1", 0), Handler)
    srv.routes = {}
    srv.url = f"http://127.0.0.1:{srv.server_port}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def dead_url() -> str:
    """A URL on a port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.gz"


def only(dest_dir, name):
    """The directory holds exactly `name`: no temp or partial files."""
    return sorted(p.name for p in dest_dir.iterdir()) == [name]


def test_success_without_progress(server, tmp_path, capsys):
    server.routes["/a/file.gz"] = ("ok", BODY)
    dest = tmp_path / "sub" / "file.gz"
    assert download_file([server.url + "/a/file.gz"], dest, SHA256, progress=False) == dest
    assert dest.read_bytes() == BODY
    assert only(dest.parent, "file.gz")
    assert capsys.readouterr().err == ""


def test_md5_any_of_several_and_no_checksum(server, tmp_path):
    server.routes["/f"] = ("ok", BODY)
    wrong = "sha256:" + "0" * 64
    download_file([server.url + "/f"], tmp_path / "one", (wrong, MD5), progress=False)
    download_file([server.url + "/f"], tmp_path / "two", None, progress=False)
    assert (tmp_path / "one").read_bytes() == BODY == (tmp_path / "two").read_bytes()


def test_checksum_mismatch_then_second_mirror(server, tmp_path, capsys):
    server.routes["/bad/f.gz"] = ("ok", BODY[:-1] + b"x")
    server.routes["/good/f.gz"] = ("ok", BODY)
    dest = tmp_path / "f.gz"
    download_file([server.url + "/bad/f.gz", server.url + "/good/f.gz"], dest, SHA256, False)
    assert dest.read_bytes() == BODY and only(tmp_path, "f.gz")
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1
    assert "/bad/f.gz" in warning and "checksum mismatch" in warning


def test_dead_mirror_then_success(server, tmp_path, capsys):
    server.routes["/f.gz"] = ("ok", BODY)
    dest = tmp_path / "f.gz"
    download_file([dead_url(), server.url + "/f.gz"], dest, SHA256, progress=False)
    assert dest.read_bytes() == BODY and only(tmp_path, "f.gz")
    assert "refused" in capsys.readouterr().err.lower()


def test_interrupted_transfer_then_success(server, tmp_path, capsys):
    server.routes["/short/f.gz"] = ("short", BODY)
    server.routes["/ok/f.gz"] = ("ok", BODY)
    dest = tmp_path / "f.gz"
    # No checksum: the Content-Length check alone must catch the short body.
    download_file([server.url + "/short/f.gz", server.url + "/ok/f.gz"], dest, None, False)
    assert dest.read_bytes() == BODY and only(tmp_path, "f.gz")
    assert f"got {len(BODY) // 2} of {len(BODY)} bytes" in capsys.readouterr().err


def test_stalled_mirror_times_out_then_success(server, tmp_path):
    server.routes["/slow"] = ("hang", BODY)
    server.routes["/fast"] = ("ok", BODY)
    dest = tmp_path / "f"
    download_file([server.url + "/slow", server.url + "/fast"], dest, SHA256, False, timeout=0.2)
    assert dest.read_bytes() == BODY and only(tmp_path, "f")


def test_all_mirrors_fail(server, tmp_path, capsys):
    server.routes["/short/f.gz"] = ("short", BODY)
    server.routes["/bad/f.gz"] = ("ok", b"not the file")
    urls = [
        dead_url(),
        server.url + "/missing/f.gz",
        server.url + "/short/f.gz",
        server.url + "/bad/f.gz",
    ]
    dest = tmp_path / "f.gz"
    with pytest.raises(DataError) as err:
        download_file(urls, dest, SHA256, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "f.gz" in message and str(dest) in message and "--data-dir" in message
    for url in urls:
        assert url in message
    assert "HTTP 404" in message and "interrupted transfer" in message
    assert "checksum mismatch" in message
    assert isinstance(err.value, DownloadError) and len(err.value.failures) == 4
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    assert len(capsys.readouterr().err.strip().splitlines()) == 4


def test_failed_download_keeps_existing_file(server, tmp_path):
    dest = tmp_path / "f.gz"
    dest.write_bytes(b"old")
    with pytest.raises(DataError):
        download_file([server.url + "/missing"], dest, SHA256, progress=False)
    assert dest.read_bytes() == b"old" and only(tmp_path, "f.gz")
