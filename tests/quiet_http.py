"""A loopback HTTP server for download tests that never leaks into later tests.

ThreadingHTTPServer's handler threads are daemons that `server_close` does not wait for, and a
handler whose client went away prints a traceback to stderr whenever it ends: into whatever test
runs then. This one joins its handler threads on close and drops client disconnects silently.
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class QuietServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that joins its handlers on `server_close` and prints no tracebacks."""

    daemon_threads = False
    block_on_close = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that disconnected mid-response is expected in these tests: say nothing."""
