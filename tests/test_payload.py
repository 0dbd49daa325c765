"""The wire format: signatures are checked before anything is unpickled."""

from __future__ import annotations

import json
import pickle

import pytest

from k8s_executor import _payload as wire
from k8s_executor.errors import PayloadError, RemoteError, VersionMismatchError

KEY = b"k" * 32


class Boom:
    """Unpickling this object would record that it happened."""

    unpickled = False

    def __reduce__(self) -> tuple[object, ...]:
        return (Boom._mark, ())

    @staticmethod
    def _mark() -> Boom:
        Boom.unpickled = True
        return Boom()


def test_roundtrip_inputs() -> None:
    tasks = [wire.TaskInput(1, 0, b"abc"), wire.TaskInput(2, 1, b"def")]
    assert wire.open_inputs(KEY, wire.seal_inputs(KEY, tasks)) == tasks


def test_wrong_key_rejected_before_unpickling() -> None:
    sealed = wire.seal(b"x" * 32, "in", pickle.dumps(Boom()))
    with pytest.raises(PayloadError, match="signature does not match"):
        wire.open_inputs(KEY, sealed)
    assert not Boom.unpickled


@pytest.mark.parametrize("position", [0, 10, -1])
def test_tampered_bytes_rejected(position: int) -> None:
    sealed = bytearray(wire.seal_inputs(KEY, [wire.TaskInput(1, 0, b"abc")]))
    sealed[position] ^= 0xFF
    with pytest.raises(PayloadError):
        wire.open_inputs(KEY, bytes(sealed))


def test_not_an_envelope() -> None:
    with pytest.raises(PayloadError, match="not a k8s_executor payload"):
        wire.open_inputs(KEY, b"\x80\x04garbage")


def test_wrong_kind_rejected() -> None:
    sealed = wire.seal(KEY, "fn", pickle.dumps(()))
    with pytest.raises(PayloadError, match="expected a 'in' payload, got 'fn'"):
        wire.open_inputs(KEY, sealed)


def _forge_header(python: str, version: str, key: bytes = KEY) -> bytes:
    """An envelope as another Python / package version would write it, correctly signed."""
    import hashlib
    import hmac

    header = json.dumps(
        {"kind": "in", "codec": "pickle", "python": python, "version": version}
    ).encode()
    head = wire._PREFIX.pack(wire.MAGIC, wire.FORMAT, len(header)) + header
    body = pickle.dumps([])
    return head + hmac.new(key, head + body, hashlib.sha256).digest() + body


@pytest.mark.parametrize(("python", "version"), [("2.7", "0.1.0"), (wire.PYTHON, "99.0.0")])
def test_version_mismatch_names_both_sides(python: str, version: str) -> None:
    with pytest.raises(VersionMismatchError, match=f"written by Python {python} with"):
        wire.open_inputs(KEY, _forge_header(python, version))


def test_index_failure_readable_across_versions() -> None:
    sealed = wire.seal_index_failure(KEY, wire.IndexFailure("version", "worker is 3.12"))
    outcome = wire.open_outcomes(KEY, sealed)
    assert isinstance(outcome, wire.IndexFailure)
    exc = outcome.to_exception()
    assert isinstance(exc, VersionMismatchError)
    assert "worker is 3.12" in str(exc)


class CodedError(Exception):
    """An exception whose __init__ takes more than it passes on (issue 14 item 13)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class UnpicklableState(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = __import__("threading").Lock()


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return wire.rebuild_exception(wire.capture_error(wire.RAISED, caught), "f")


def test_exception_with_extra_init_arguments_round_trips() -> None:
    rebuilt = _raised(CodedError("disk full", 28))
    assert type(rebuilt) is CodedError  # `except CodedError` catches it
    assert isinstance(rebuilt, CodedError)
    assert (rebuilt.args, rebuilt.code) == (("disk full",), 28)
    assert "CodedError: disk full" in str(rebuilt.__cause__)


def test_exception_that_cannot_travel_says_why() -> None:
    rebuilt = _raised(UnpicklableState("held a lock"))
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.type_name.endswith("UnpicklableState")
    assert "could not be sent back: TypeError" in rebuilt.remote_traceback
