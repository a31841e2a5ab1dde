"""`kdbench site serve`: the built site on localhost, for a local look (the standard library's
http.server; not for production)."""

from __future__ import annotations

import functools
import http.server
import sys
from pathlib import Path

from kdbench.errors import UsageError
from kdbench.site.pages import MARKER


def make_server(out: Path, port: int = 8000, bind: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server over the site folder `out` (port 0: any free port).

    Raises:
        UsageError: `out` is not a built site, or the port is taken.
    """
    out = Path(out)
    if not (out / MARKER).is_file():
        raise UsageError(f"no built site at {out}; run `kdbench site build --out {out}` first")
    handler = functools.partial(_QuietHandler, directory=str(out))
    try:
        return http.server.ThreadingHTTPServer((bind, port), handler)
    except OSError as e:
        raise UsageError(f"cannot listen on {bind}:{port}: {e.strerror}; pick another --port") from None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(out: Path, port: int = 8000, bind: str = "127.0.0.1") -> None:
    """Serve until interrupted."""
    server = make_server(out, port, bind)
    print(f"serving {out} at http://{bind}:{server.server_port}/ (Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
