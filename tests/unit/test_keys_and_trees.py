"""Key wrapping and tree encoding."""

import base64
import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from strongroom import model
from strongroom.keyfile import derive
from strongroom.crypto import MasterKey, unwrap_key, wrap_key
from strongroom.errors import IntegrityError, UsageError, WrongPassphrase


def test_wrapped_key_opens_only_with_its_passphrase() -> None:
    key = MasterKey.generate()
    keyfile = wrap_key(key, "a long enough passphrase")
    assert unwrap_key(keyfile, "a long enough passphrase").secret == key.secret
    assert key.secret.hex() not in keyfile
    with pytest.raises(WrongPassphrase):
        unwrap_key(keyfile, "another long passphrase")


def test_key_files_are_written_at_56_mib_4_passes_and_those_of_64_mib_3_passes_still_open() -> None:
    """Key files written before 2026-12-05 (RFC 9106's 64 MiB, 3 passes) keep opening; new
    ones ask for 56 MiB and 4 passes (as costly to a guesser, 8 MiB less at every start-up)."""
    key = MasterKey.generate()
    doc = json.loads(wrap_key(key, "a long enough passphrase"))
    assert (doc["memory_cost"], doc["time_cost"], doc["parallelism"]) == (57344, 4, 2)
    salt, nonce = base64.b64decode(doc["salt"]), base64.b64decode(doc["nonce"])
    old = {"time_cost": 3, "memory_cost": 65536, "parallelism": 2}
    wrapped = AESGCM(derive("a long enough passphrase", salt, old)).encrypt(nonce, key.secret, b"strongroom keyfile v1")
    doc.update(old, wrapped=base64.b64encode(wrapped).decode())
    assert unwrap_key(json.dumps(doc), "a long enough passphrase").secret == key.secret


@pytest.mark.parametrize("change,message", [
    ({"time_cost": 10**7}, "Argon2id parameters this version does not use (time_cost 10000000"),
    ({"memory_cost": 2**31}, "memory_cost 2147483648"),
    ({"parallelism": 255}, "parallelism 255"),
    ({"time_cost": "3"}, "time_cost '3'"),
    ({"time_cost": None}, "time_cost None"),
    ({"kdf": "scrypt"}, "a format this version does not know"),
    ({"salt": "AAAA"}, "wrong length"),
    ({"wrapped": "not base64!"}, "the key file is malformed"),
])
def test_key_file_with_unknown_kdf_parameters_is_refused_at_once(change: dict, message: str) -> None:
    # A hostile vault serves the key file that a restore from another machine unwraps: the
    # refusal must come before any Argon2 work, which could otherwise run for hours.
    doc = json.loads(wrap_key(MasterKey.generate(), "a long enough passphrase"))
    doc.update(change)
    started = time.monotonic()
    with pytest.raises(IntegrityError, match=re.escape(message)):
        unwrap_key(json.dumps(doc), "a long enough passphrase")
    assert time.monotonic() - started < 0.05


@pytest.mark.parametrize("text", ["", "[]", "{", '{"version": 1}'])
def test_garbage_key_file_is_an_integrity_error(text: str) -> None:
    with pytest.raises(IntegrityError, match="key file"):
        unwrap_key(text, "a long enough passphrase")


def test_short_passphrase_is_refused() -> None:
    with pytest.raises(UsageError):
        wrap_key(MasterKey.generate(), "too short")


def test_ids_are_keyed() -> None:
    assert MasterKey(bytes(64)).blob_id(b"x") != MasterKey(bytes(range(64))).blob_id(b"x")


entries = st.lists(st.fixed_dictionaries({
    "n": st.binary(min_size=1, max_size=255), "t": st.sampled_from("fdlpcbs"),
    "m": st.integers(0, 0o7777), "mt": st.integers(-2**62, 2**62),
}, optional={"x": st.dictionaries(st.binary(max_size=20), st.binary(max_size=100), max_size=3),
             "c": st.lists(st.binary(min_size=32, max_size=32), max_size=3),
             "sp": st.lists(st.lists(st.integers(0, 2**40), min_size=2, max_size=2), max_size=3)}),
    unique_by=lambda e: e["n"], max_size=20)


@settings(max_examples=50, deadline=None)
@given(entries)
def test_tree_round_trip_and_canonical(items: list[dict]) -> None:
    data = model.encode_tree(list(items))
    assert model.decode_tree(data) == sorted(items, key=lambda e: e["n"])
    assert model.encode_tree(list(reversed(items))) == data


def test_garbage_tree_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        model.decode_tree(b"\x93garbage")


@pytest.mark.parametrize("name,safe", [(b"a", True), (b"caf\xe9", True), (b"", False), (b".", False),
                                       (b"..", False), (b"a/b", False), (b"/etc", False), (b"a\0b", False)])
def test_safe_names(name: bytes, safe: bool) -> None:
    assert model.is_safe_name(name) is safe
