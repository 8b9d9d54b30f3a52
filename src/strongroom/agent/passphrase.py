"""Where the passphrase comes from: a file, the environment, or a prompt; never from argv."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from strongroom.keyfile import check_passphrase_strength
from strongroom.errors import UsageError

ENV_VAR = "STRONGROOM_PASSPHRASE"


def read_passphrase(file: Path | None, *, confirm: bool = False, prompt: str = "Passphrase: ") -> str:
    if file is not None:
        try:
            text = file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read the passphrase file {file}: {exc.strerror}") from None
    elif os.environ.get(ENV_VAR):
        text = os.environ[ENV_VAR]
    elif sys.stdin.isatty():
        text = getpass.getpass(prompt)
        if confirm and getpass.getpass("Repeat the passphrase: ") != text:
            raise UsageError("the two passphrases differ")
    else:
        raise UsageError(f"no passphrase: use --passphrase-file or set ${ENV_VAR}")
    check_passphrase_strength(text)
    return text
