"""A real `strongroom vault serve` on 127.0.0.1, for the served-vault tests."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
from conftest import Strongroom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VaultServer:
    """One served vault folder; start/stop/restart keep the same port and certificate."""

    def __init__(self, admin: Strongroom, folder: Path, port: int | None = None, *extra_args: str,
                 env: dict[str, str] | None = None) -> None:
        self.admin, self.folder, self.extra_args, self.extra_env = admin, folder, list(extra_args), env
        self.port = port or free_port()
        self.tls = "--no-tls" not in self.extra_args
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = folder.parent / f"serve-{self.port}.log"

    def start(self) -> "VaultServer":
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(self.admin.cmd + ["vault", "serve", str(self.folder), "--port", str(self.port),
                                                       *self.extra_args],
                                     env=self.admin.env(self.extra_env), stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vault serve exited:\n{self.log.read_text()}")
            try:
                with self.client() as c:  # closed: an idle connection would hold up a graceful stop
                    c.get("/api/v1/vault").raise_for_status()
                return self
            except (httpx.TransportError, FileNotFoundError):  # not listening, or no certificate yet
                time.sleep(0.1)
        self.stop(signal.SIGKILL)  # never left running behind a failed test
        raise AssertionError(f"vault serve did not answer in 30 s:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def fingerprint(self) -> str:
        return json.loads((self.folder / "serve.json").read_text())["fingerprint"]

    def client(self, token: str | None = None) -> httpx.Client:
        """A plain HTTP client trusting exactly this vault's certificate, as a test's own eyes."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if not self.tls:
            return httpx.Client(base_url=self.url, headers=headers, timeout=30)
        context = ssl.create_default_context(cafile=str(self.folder / "tls" / "cert.pem"))
        context.check_hostname = False
        return httpx.Client(base_url=self.url, verify=context, headers=headers, timeout=30)

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        with self.client(token) as c:
            return c.get(path)

    def credentials(self, out: Path, *extra: str) -> Path:
        return self.admin.make_credentials(self.folder, out, *extra)
