"""Fixtures for the end-to-end tests: run the real `strongroom` CLI as a subprocess."""

from __future__ import annotations

import json as jsonlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PASSPHRASE = "correct horse battery staple"
MACHINE = "test-01"
REPO = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 600


def strongroom_command() -> tuple[list[str], dict[str, str]]:
    """The command prefix to run the CLI and extra environment it needs."""
    exe = shutil.which("strongroom")
    if exe:
        return [exe], {}
    # not installed as a console script: run the package from the source tree
    pythonpath = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "strongroom"], {"PYTHONPATH": pythonpath}


class CommandFailed(AssertionError):
    pass


class Strongroom:
    """One agent home (one machine) driving the CLI."""

    def __init__(self, home: Path, passphrase: str | None = PASSPHRASE):
        self.home = Path(home)
        self.passphrase = passphrase
        self.cmd, self._cmd_env = strongroom_command()
        # set by the registration helpers
        self.vault: Path | None = None
        self.cred: Path | None = None
        self.machine: str | None = None

    def env(self, env_extra: dict[str, str | None] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._cmd_env)
        env["STRONGROOM_HOME"] = str(self.home)
        env.pop("STRONGROOM_PASSPHRASE", None)
        if self.passphrase is not None:
            env["STRONGROOM_PASSPHRASE"] = self.passphrase
        for k, v in (env_extra or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def run(self, *args, check: bool = True, input: str | bytes | None = None,
            env_extra: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
        """Run `strongroom ARGS...`; stdout/stderr are str (undecodable bytes surrogate-escaped)."""
        argv = self.cmd + [a if isinstance(a, bytes) else os.fspath(a) if isinstance(a, os.PathLike) else str(a)
                           for a in args]
        if isinstance(input, str):
            input = input.encode()
        raw = subprocess.run(
            argv,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            env=self.env(env_extra),
            timeout=COMMAND_TIMEOUT,
        )
        res = subprocess.CompletedProcess(
            raw.args, raw.returncode,
            raw.stdout.decode("utf-8", "surrogateescape"),
            raw.stderr.decode("utf-8", "surrogateescape"),
        )
        if check and res.returncode != 0:
            raise CommandFailed(
                f"strongroom {' '.join(map(repr, args))} exited {res.returncode}\n"
                f"--- stdout ---\n{res.stdout[-4000:]}\n--- stderr ---\n{res.stderr[-4000:]}"
            )
        return res

    def json(self, *args, check: bool = True, env_extra: dict[str, str | None] | None = None):
        """Run with --json appended and return the parsed stdout."""
        res = self.run(*args, "--json", check=check, env_extra=env_extra)
        try:
            return jsonlib.loads(res.stdout)
        except ValueError as e:
            raise AssertionError(
                f"strongroom {' '.join(map(str, args))} --json printed invalid JSON ({e}):\n{res.stdout[:4000]}"
                f"\n--- stderr ---\n{res.stderr[-2000:]}"
            ) from None

    # conveniences
    def backup(self, *paths, **kw) -> dict:
        return self.json("backup", *paths, **kw)

    def points(self) -> list[dict]:
        return self.json("points")

    def restore(self, point: str, *paths, target, conflict: str = "overwrite", **kw) -> dict:
        return self.json("restore", point, *paths, "--target", target, "--conflict", conflict, **kw)

    def create_vault(self, vault: Path) -> Path:
        self.run("vault", "create", vault)
        return vault

    def make_credentials(self, vault: Path, out: Path, *extra) -> Path:
        self.run("vault", "credentials", vault, "--out", out, *extra)
        return out

    def register(self, cred: Path, machine: str = MACHINE, vault: Path | None = None) -> "Strongroom":
        self.run("register", "--credentials", cred, "--machine", machine)
        self.cred, self.machine, self.vault = cred, machine, vault
        return self

    def __repr__(self) -> str:
        return f"Strongroom(home={self.home}, machine={self.machine})"


def setup_registered(base: Path, machine: str = MACHINE) -> Strongroom:
    """Create base/vault, base/cred and a home base/home registered as `machine`."""
    base.mkdir(parents=True, exist_ok=True)
    sr = Strongroom(base / "home")
    vault = sr.create_vault(base / "vault")
    cred = sr.make_credentials(vault, base / "cred")
    return sr.register(cred, machine, vault)


@pytest.fixture
def sr(tmp_path) -> Strongroom:
    """An unregistered agent home under tmp_path."""
    return Strongroom(tmp_path / "home")


@pytest.fixture
def registered(tmp_path) -> Strongroom:
    """A vault at tmp_path/vault and an agent home tmp_path/home registered to it as test-01."""
    return setup_registered(tmp_path)


@pytest.fixture
def make_home(tmp_path):
    """Factory for further agent homes: make_home("home2", passphrase=...) -> Strongroom."""

    def factory(name: str = "home2", passphrase: str | None = PASSPHRASE) -> Strongroom:
        return Strongroom(tmp_path / name, passphrase)

    return factory


@pytest.fixture
def second_machine(registered, make_home, tmp_path):
    """Factory registering another machine to the same vault with fresh credentials."""

    def factory(machine: str = "test-02", home: str = "home2") -> Strongroom:
        other = make_home(home)
        cred = registered.make_credentials(registered.vault, tmp_path / f"cred-{home}")
        return other.register(cred, machine, registered.vault)

    return factory


@pytest.fixture(scope="session")
def registered_factory():
    """For module-scoped fixtures: setup_registered(base_dir, machine=...)."""
    return setup_registered


def assert_clean_failure(res: subprocess.CompletedProcess, code: int, message: str) -> None:
    """A refused command: exit `code`, and on stderr one line, the error, in which the regular
    expression `message` is found. A crash is not a refusal: an internal error or a traceback
    fails, whatever the exit code."""
    context = f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-2000:]}\n--- stderr ---\n{res.stderr[-3000:]}"
    assert res.returncode != 0, "command unexpectedly succeeded\n" + context
    assert "Traceback" not in res.stderr, "traceback on stderr\n" + context
    assert "internal error" not in res.stderr, "a crash, not a refusal\n" + context
    assert res.returncode == code, f"expected exit code {code}\n" + context
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    if res.returncode == 2:
        # a usage error may come with click's standard "Usage: ..." / "Try '... --help'" hint lines
        lines = [line for line in lines if not line.startswith(("Usage: ", "Try '"))]
    assert len(lines) == 1, f"expected exactly one line (the error) on stderr, got {len(lines)}\n" + context
    assert lines[0].startswith(("strongroom: error: ", "Error: ")), "not an error line\n" + context
    assert re.search(message, lines[0]), f"the error does not say {message!r}\n" + context


def saying(*words: str) -> str:
    """A message pattern for assert_clean_failure: every one of `words`, in any order."""
    return "^" + "".join(f"(?=.*{re.escape(w)})" for w in words)


def packs_in(vault: Path) -> list[Path]:
    return sorted(p for p in (vault / "packs").glob("*/*") if not p.name.startswith("."))


def wait_for_packs(vault: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Waits until `count` packs landed while `proc` (a backup) runs; False if it ended first."""
    deadline = time.monotonic() + timeout
    while len(packs_in(vault)) < count and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.poll() is None


def killed_once_packs_land(sr: Strongroom, args: list[str], folder: Path, count: int) -> None:
    """Runs `strongroom ARGS` and SIGKILLs it once `count` packs landed in `folder`; skips the
    test when the command finished first."""
    proc = subprocess.Popen(sr.cmd + [str(a) for a in args], env=sr.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_for_packs(folder, count, proc):
        proc.wait()
        pytest.skip(f"strongroom {args[0]} finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def clean_failure():
    return assert_clean_failure


@pytest.fixture
def served(tmp_path):
    """A vault at tmp_path/vault served on a free port of 127.0.0.1 (stopped at the end)."""
    from served import VaultServer

    admin = Strongroom(tmp_path / "admin-home")
    folder = admin.create_vault(tmp_path / "vault")
    server = VaultServer(admin, folder).start()
    yield server
    server.stop()


@pytest.fixture
def served_machine(served, tmp_path):
    """Factory: a new agent home registered with the served vault as `machine`."""

    def factory(machine: str, passphrase: str = PASSPHRASE) -> Strongroom:
        sr = Strongroom(tmp_path / f"home-{machine}", passphrase)
        cred = served.credentials(tmp_path / f"cred-{machine}")
        return sr.register(cred, machine)

    return factory
