"""Run the service with uvicorn: from a pipeline config (``rerank serve``), in the foreground
with signal handling, or in a background thread (tests, notebooks)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from rerank.config import build_pipeline, parse_config
from rerank.extras import missing_extra

try:
    import uvicorn
except ImportError as error:
    raise missing_extra("serve", "the HTTP service", error) from error

from rerank.pipeline import Stage
from rerank.serve.app import create_app
from rerank.serve.settings import ServeSettings


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app to refuse new requests as soon as shutdown starts
    (uvicorn then stops listening and lets in-flight requests finish)."""

    def __init__(self, config: uvicorn.Config, on_exit) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once shut down, so the process would die by it; a graceful
        # stop is a normal end for `rerank serve` (exit status 0).
        getattr(self, "_captured_signals", []).clear()


class RerankServer:
    """The rerank HTTP service for ``pipeline`` on ``settings.host``:``settings.port`` (port 0
    picks a free port; :attr:`url` tells which).

    ``run()`` blocks and handles SIGINT/SIGTERM gracefully; ``start()`` serves from a background
    thread until ``stop()``.
    """

    def __init__(self, pipeline: Stage, settings: ServeSettings | None = None, *, log_level: str = "warning",
                 costs=None) -> None:
        self.settings = settings or ServeSettings()
        self.app = create_app(pipeline, self.settings, costs=costs)
        config = uvicorn.Config(self.app, host=self.settings.host, port=self.settings.port, log_level=log_level,
                                access_log=False, lifespan="on",
                                timeout_graceful_shutdown=self.settings.shutdown_timeout_s or None)  # type: ignore[arg-type]  # seconds, fractional
        self._server = _DrainingServer(config, self.app.state.service.drain)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (known once started)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running service."""
        return f"http://{self.settings.host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM; in-flight requests finish (up to ``shutdown_timeout_s``)."""
        self._server.run()

    def start(self, timeout: float = 60.0) -> RerankServer:
        """Serve from a background thread; returns once the port is open."""
        self._thread = threading.Thread(target=self._server.run, name="rerank-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server did not start on {self.settings.host}:{self.settings.port}")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Shut down gracefully, as on SIGTERM, and wait for the thread."""
        self.app.state.service.drain()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> RerankServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def load_service(config_path: str | Path, **overrides) -> tuple[Stage, ServeSettings]:
    """The pipeline and settings a config describes: its ``pipeline`` and ``[stages]``, its
    ``[serve]`` table, then ``overrides`` (``None`` values ignored). The config and the settings
    are checked before any model loads; :func:`create_app` refuses a pipeline it cannot serve."""
    config = parse_config(config_path)
    table = dict(config.extra.get("serve") or {})
    if config.tune and "cutoff_values" not in table:
        table["cutoff_values"] = config.tune
    settings = ServeSettings.from_table(table, f"{config_path} [serve]").override(**overrides)
    return build_pipeline(config, precision=settings.precision), settings
