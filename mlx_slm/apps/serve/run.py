"""Starting the server: load the models on the worker, then serve HTTP with uvicorn until
SIGINT or SIGTERM, letting in-flight requests finish first."""

import ipaddress
import socket
import sys
import threading

from mlx_slm.apps.serve.worker import Settings, Worker
from mlx_slm.errors import SlmError
from mlx_slm.loader import LoadOptions

EXTRA_HINT = ("mlx-slm serve needs starlette and uvicorn, which are not installed: "
              "pip install 'mlx-slm[serve]'")


def require_extra() -> None:
    """Fail with the one-line install hint when the `serve` extra is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise SlmError(EXTRA_HINT) from None


def build(names: list[str], load: LoadOptions = LoadOptions(), settings: Settings | None = None,
          api_key: str | None = None):
    """Load the models on a started worker; returns (worker, ASGI app)."""
    require_extra()
    from mlx_slm.apps.serve.http import make_app

    worker = Worker(names, load, settings or Settings())
    worker.start()
    return worker, make_app(worker, api_key)


def _server(app, host: str, port: int, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_keep_alive=30)
    return uvicorn.Server(config)


def serve(names: list[str], host: str = "127.0.0.1", port: int = 8080,
          load: LoadOptions = LoadOptions(), settings: Settings | None = None,
          api_key: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, drains, then the worker stops."""
    check_address(host, port)  # before the models load, not after
    worker, app = build(names, load, settings, api_key)
    for line in startup_lines(worker.models, host, port, api_key):
        print(line, file=sys.stderr, flush=True)
    try:
        _server(app, host, port, "info").run()
    finally:
        worker.stop()


def startup_lines(names: list[str], host: str, port: int, api_key: str | None) -> list[str]:
    """What the log says once the models are loaded: the models, the URL, and a warning
    when the server is reachable from the network with no key."""
    shown = f"[{host}]" if ":" in host else host
    lines = [f"Serving {', '.join(names)} at http://{shown}:{port}/v1"]
    if api_key is None and not _loopback(host):
        lines.append(f"Warning: {host} is reachable from the network and no API key is set; "
                     "anyone who can connect can use the server (--api-key KEY).")
    return lines


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only localhost is known to be local
        return False


def check_address(host: str, port: int) -> None:
    """Fail with one line if `host:port` cannot be listened on (in use, not ours)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise SlmError(f"Cannot listen on {host}:{port}: {err.strerror or err}.") from None


class BackgroundServer:
    """A server on a thread of this process (tests, benchmarks): `with BackgroundServer(...)`."""

    def __init__(self, names: list[str], port: int, host: str = "127.0.0.1", **options):
        self.worker, app = build(names, **options)
        self.server = _server(app, host, port, "warning")
        self.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise SlmError(f"The server did not start on {self.url}.")
            self.thread.join(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.worker.stop()
