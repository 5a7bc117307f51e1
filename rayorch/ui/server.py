"""Serving the app: in the foreground (``rayorch ui``) or on a background thread (tests,
benchmarks, notebooks), on a loopback address unless told otherwise."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from types import TracebackType

import uvicorn

from rayorch.errors import ConfigError, InfrastructureError
from rayorch.ui.app import UIConfig, create_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_actions: bool, remote_actions: bool) -> None:
    """Actions change the ledger and start work: only on loopback unless asked explicitly."""
    if allow_actions and not is_loopback(host) and not remote_actions:
        raise ConfigError(
            f"--allow-actions on --host {host} would let anyone who can reach it cancel and "
            "start backfills; bind to 127.0.0.1, or add --allow-remote-actions to mean it",
            field="--host",
        )


def serve(config: UIConfig, host: str = "127.0.0.1", port: int = 8265) -> None:
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """``with BackgroundServer(cfg) as url:`` serves the app on a thread until the block ends."""

    def __init__(self, config: UIConfig, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(config), host=host, port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="rayorch-ui")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise InfrastructureError(f"the UI server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
