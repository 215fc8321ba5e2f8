"""Run the service with uvicorn: from a pipeline or service config, model names and folders
(``rerank serve``), in the foreground with signal handling, or in a background thread (tests,
notebooks)."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rerank.config import ConfigError, parse_config, read_toml
from rerank.extras import missing_extra

try:
    import uvicorn
except ImportError as error:
    raise missing_extra("serve", "the HTTP service", error) from error

from typing import TYPE_CHECKING

from rerank.pipeline import Stage
from rerank.serve.app import create_app
from rerank.serve.hosting import ModelSpec, service_specs
from rerank.serve.settings import ServeSettings, SettingsError

if TYPE_CHECKING:
    from rerank.serve.auth import KeyRing
    from rerank.tuning.cost_model import CostModel


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
    """The rerank HTTP service for ``models`` (one stage, a name → stage/source mapping, or
    :class:`~rerank.serve.hosting.ModelSpec` s; see :func:`~rerank.serve.app.create_app`) on
    ``settings.host``:``settings.port`` (port 0 picks a free port; :attr:`url` tells which).

    ``run()`` blocks and handles SIGINT/SIGTERM gracefully; ``start()`` serves from a background
    thread until ``stop()``. It refuses a non-loopback address without API keys unless
    ``settings.insecure``.
    """

    def __init__(self, models: Stage | Mapping[str, Any] | Sequence[ModelSpec], settings: ServeSettings | None = None,
                 *, log_level: str = "warning", costs: CostModel | None = None,
                 keys: KeyRing | None = None, tracer_provider: Any = None) -> None:
        self.settings = settings or ServeSettings()
        self.app = create_app(models, self.settings, costs=costs, keys=keys, tracer_provider=tracer_provider)
        check_exposure(self.settings.host, self.app.state.service.keys is not None, self.settings.insecure)
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

    @property
    def ready(self) -> bool:
        """Whether every preloaded model is loaded and warmed."""
        return self.app.state.service.pool.ready

    def start(self, timeout: float = 120.0, *, wait_ready: bool = True) -> RerankServer:
        """Serve from a background thread; returns once the port is open (and, with
        ``wait_ready``, once every preloaded model is loaded and warmed)."""
        self._thread = threading.Thread(target=self._server.run, name="rerank-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server did not start on {self.settings.host}:{self.settings.port}")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.01)
        service = self.app.state.service
        while wait_ready and not service.pool.ready:
            failed = [h.failure for h in service.pool.hosts.values() if h.failure and h.spec.preload]
            if failed:
                self.stop()
                raise RuntimeError(f"a model failed to load: {failed[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the models did not load in time")
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

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) only listens on this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def check_exposure(host: str, keyed: bool, insecure: bool) -> None:
    """Refuse to listen beyond loopback without API keys, unless told ``insecure``."""
    if not keyed and not insecure and not is_loopback(host):
        raise SettingsError(f"refusing to listen on {host} without API keys: anyone who reaches the port would get "
                            "scores. Give --api-keys FILE (or RERANK_API_KEYS), or --insecure if a gateway in front "
                            "checks callers")


def load_service(config_path: str | Path | None = None, *, models: Sequence[str] = (), **overrides: Any
                 ) -> tuple[list[ModelSpec], ServeSettings]:
    """The models and settings to serve, checked before any model loads.

    ``config_path``: a pipeline config (its expression is one model, named after the file, and
    its ``[serve]`` table the settings), a service config (a ``[models]`` table of names →
    pipeline configs or model names, and ``[serve]``), or a model folder, Hugging Face id or short
    name (served as itself, no config needed). ``models``: ``NAME=SOURCE`` options (``--model``),
    added to or replacing the config's. Then ``overrides`` (``None`` values ignored).
    """
    specs: list[ModelSpec] = []
    table: dict[str, Any] = {}
    where = str(config_path) if config_path is not None else "--model"
    if config_path is not None and str(config_path).endswith(".toml"):
        _, data = read_toml(config_path)
        table = dict(data.get("serve") or {})
        if "pipeline" in data:
            config = parse_config(config_path)
            if config.tune and "cutoff_values" not in table:
                table["cutoff_values"] = config.tune
            specs.append(ModelSpec(Path(config_path).stem, str(config_path)))
        elif "models" not in data and not models:
            raise ConfigError(f'{config_path}: needs a pipeline = "..." expression (one model) or a [models] table '
                              '(several: name = "pipeline.toml")')
        specs += service_specs(data.get("models"), [], where)
    elif config_path is not None:
        source = str(config_path)
        name = Path(source.rstrip("/")).name if Path(source).exists() else source.split("/")[-1]
        specs.append(ModelSpec(name, source))
    replaced = service_specs(None, models, where)
    specs = [s for s in specs if s.name not in {r.name for r in replaced}] + replaced
    if not specs:
        raise SettingsError("nothing to serve: give --pipeline (a config, model folder or name) or --model NAME=SOURCE")
    for spec in specs:  # every config is read and checked now, before any model loads
        if isinstance(spec.source, str) and spec.source.endswith(".toml"):
            parse_config(spec.source)
    settings = ServeSettings.from_table(table, f"{where} [serve]").override(**overrides)
    if settings.preload is False:
        for spec in specs:
            spec.preload = False
    return specs, settings
