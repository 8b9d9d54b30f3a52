"""The commands that derive this machine's key load no SQLAlchemy before they open the vault.

Argon2id takes 56 MiB while it runs; `open_agent` derives the key before it opens the vault,
so that those 56 MiB come on top of the command's own modules only. SQLAlchemy (22 MiB) must
therefore not come in with the command modules: an import of it from an agent-side module
(a record type taken from vault/service.py instead of vault/shapes.py) would quietly put it
back under the peak.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# The modules of the commands that call open_agent (cli/main.py COMMAND_MODULES).
KEYED = ["backup_cmd", "restore_cmd", "browse_cmds", "check_cmd", "read_cmds", "mount_cmd", "kinds_cmds", "stats_cmd"]


@pytest.mark.parametrize("module", KEYED)
def test_command_module_loads_no_sqlalchemy(module: str) -> None:
    code = (f"import sys, strongroom.cli.main, strongroom.cli.{module}\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'httpx'))\n"
            "print(' '.join(heavy[:5]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"strongroom.cli.{module} loads {out} before the key is derived"


def test_the_served_vaults_client_loads_no_sqlalchemy() -> None:
    """An agent of a served vault has no catalog: its record types come from vault/shapes.py,
    and SQLAlchemy's import (~0.2 CPU-s) stays out of every served command."""
    code = ("import sys, strongroom.vault.client\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy')[:5]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"strongroom.vault.client loads {out}"


def test_the_served_vaults_client_loads_no_trio_x509_or_httpx_cli_and_trio_loads_after_it() -> None:
    """httpcore imports trio when it is installed (pyfuse3's, for `mount`) and httpx its command
    line (pygments, rich's syntax), for what the client does not use: 70-80 ms and 6 MiB of every
    command that reaches a served vault (vault/httplibs.py); the self-signed certificate's x509
    modules are the server's alone (vault/selfsigned.py)."""
    code = ("import sys, strongroom.vault.client\n"
            "print(*(m in sys.modules for m in ('trio', 'httpx._main', 'cryptography.x509')))\n"
            "import trio\n"
            "print(trio.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False", "trio"]


def test_the_start_up_derivation_runs_before_cryptography_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """cli/earlykey.py derives with argon2 alone (keyfile.py): cryptography, blake3 and the
    agent's modules would add ~12 MiB under Argon2's 64, OpenSSL's libcrypto (hashlib) 3.7."""
    from strongroom.agent.homepath import KEYFILE  # noqa: PLC0415
    from strongroom.crypto import MasterKey, wrap_key  # noqa: PLC0415

    (tmp_path / KEYFILE).write_text(wrap_key(MasterKey.generate(), "correct horse battery staple"))
    code = ("import sys\n"
            "from strongroom import keyfile\n"
            "from strongroom.cli.earlykey import derive_early\n"
            "loaded, derive = [], keyfile.derive\n"
            "def spy(*args):\n"
            "    loaded.extend(m for m in sys.modules\n"
            "                  if m.split('.')[0] in ('cryptography', 'blake3', 'click', 'rich', '_hashlib', 'hmac'))\n"
            "    return derive(*args)\n"
            "keyfile.derive = spy\n"
            f"derive_early(['--home', {str(tmp_path)!r}, 'points'])\n"
            "assert keyfile._last_kek is not None, 'not derived'\n"
            "print(' '.join(sorted(loaded)))")
    env = {"PATH": "/usr/bin:/bin", "STRONGROOM_PASSPHRASE": "correct horse battery staple"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert out == "", f"loaded before the key was derived: {out}"


def test_the_collector_is_back_to_its_usual_pace_when_the_command_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The entry point raises the collector's threshold while modules load; a command that
    ran with it (a served restore's HTTP responses form cycles) peaked at 445 MiB."""
    code = ("import gc, sys, click\n"
            "seen = []\n"
            "invoke = click.Command.invoke\n"
            "def spy(self, ctx):\n"
            "    seen.append(gc.get_threshold()[0])\n"
            "    return invoke(self, ctx)\n"
            "click.Command.invoke = spy\n"
            f"sys.argv = ['strongroom', '--home', {str(tmp_path / 'home')!r}, 'jobs']\n"
            "from strongroom.cli.handover import main\n"
            "try:\n"
            "    main()\n"
            "finally:\n"
            "    print(*sorted(set(seen)), file=sys.stderr, flush=True)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    usual = subprocess.run([sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert "not registered" in run.stderr  # the command did run
    assert run.stderr.strip().splitlines()[-1] == usual, run.stderr
