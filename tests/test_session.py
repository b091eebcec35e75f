"""KeySession against the software key, opened the public way (`open_device("sim:PATH")`).

Every outcome is checked with public python-fido2 objects: signatures verified with the
credential's CoseKey, flags read from the authenticator data.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Event

import pytest
from fido2.ctap import STATUS, CtapDevice
from fido2.ctap2.pin import ClientPin

from yktool.errors import NoDevice, NoPresence, PinAuthBlocked, PinBlocked, PinInvalid, ToolFailed, UsageError
from yktool.fido import open_device
from yktool.fido.interaction import KeyInteraction
from yktool.fido.session import (
    EDDSA,
    ES256,
    AlreadyEnrolled,
    KeySession,
    NotThisKey,
    open_session,
)
from yktool.fido.softkey import SoftKey

PIN = "4711-secret"
RP = "io.systemd.cryptsetup"
ZERO = b"\0" * 32


class Recorder(KeyInteraction):
    """A person at the keyboard: counts PIN requests and touch prompts."""

    def __init__(self, pin: str | None = PIN) -> None:
        self.pin = pin
        self.pin_requests: list[tuple[int, str | None]] = []
        self.up_prompts = 0

    def prompt_up(self) -> None:
        self.up_prompts += 1

    def request_pin(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> str | None:
        self.pin_requests.append((int(permissions), rp_id))
        return self.pin


def sim(tmp_path: Path, name: str = "key.json") -> SoftKey:
    """The software key at tmp_path/name, opened by its spec as a command opens it."""
    device = open_device(f"sim:{tmp_path / name}")
    assert isinstance(device, SoftKey)
    return device


def with_pin(tmp_path: Path, name: str = "key.json") -> SoftKey:
    device = sim(tmp_path, name)
    KeySession(device).set_pin(PIN)
    return device


# ---------------------------------------------------------------------------- facts


def test_facts_of_a_fresh_key(tmp_path: Path) -> None:
    s = KeySession(sim(tmp_path))
    assert len(s.aaguid) == 36 and s.aaguid.count("-") == 4
    assert s.supports_algorithm(ES256) and s.supports_algorithm(EDDSA)
    assert not s.supports_algorithm(-257)
    assert s.has_hmac_secret
    assert not s.pin_is_set
    assert s.pin_retries() == 8


# ---------------------------------------------------------------------------- make / get


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_make_and_get_without_pin(tmp_path: Path, alg: int) -> None:
    ui = Recorder(pin=None)
    s = KeySession(sim(tmp_path), ui)
    cred = s.make_credential(RP, algorithms=(alg,))
    assert cred.algorithm == alg and cred.rp_id == RP and not cred.resident
    cdh = hashlib.sha256(b"challenge").digest()
    a = s.get_assertion(RP, cdh, allow=[cred.credential_id])
    # The signature verifies under the credential's own public key, over authData || cdh.
    cred.public_key.verify(bytes(a.auth_data) + cdh, a.signature)
    assert a.credential_id == cred.credential_id
    assert a.user_present and not a.user_verified
    b = s.get_assertion(RP, cdh, allow=[cred.credential_id])
    assert b.counter > a.counter
    assert s.touches == 3 and ui.up_prompts == 3
    assert ui.pin_requests == [] and s.pin_prompts == 0
    with pytest.raises(Exception):  # noqa: B017 - any verification error: wrong data must fail
        cred.public_key.verify(bytes(a.auth_data) + ZERO, a.signature)


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_make_and_get_with_pin_sets_uv(tmp_path: Path, alg: int) -> None:
    ui = Recorder()
    s = KeySession(with_pin(tmp_path), ui)
    cred = s.make_credential(RP, algorithms=(alg,), uv=True)
    assert cred.auth_data.is_user_verified()
    a = s.get_assertion(RP, ZERO, allow=[cred.credential_id], uv=True)
    cred.public_key.verify(bytes(a.auth_data) + ZERO, a.signature)
    assert a.user_verified and a.user_present
    plain = s.get_assertion(RP, ZERO, allow=[cred.credential_id])
    assert not plain.user_verified


def test_pin_is_asked_once_for_a_whole_session(tmp_path: Path) -> None:
    ui = Recorder()
    s = KeySession(with_pin(tmp_path), ui)
    c1 = s.make_credential(RP, hmac_secret=True)
    c2 = s.make_credential("ssh:", algorithms=(EDDSA,), resident=True, user_name="alice")
    s.get_assertion(RP, ZERO, allow=[c1.credential_id], uv=True, hmac_salt=os.urandom(32))
    s.get_assertion("ssh:", ZERO, allow=[c2.credential_id], uv=True)
    resident = s.list_resident()
    assert [r.credential_id for r in resident] == [c2.credential_id]
    assert resident[0].user_name == "alice" and resident[0].rp_id == "ssh:"
    assert len(ui.pin_requests) == 1 and s.pin_prompts == 1
    # asked with the permission and RP of the first operation that needed it
    assert ui.pin_requests[0] == (int(ClientPin.PERMISSION.MAKE_CREDENTIAL), RP)


def test_pin_from_constructor_is_never_asked(tmp_path: Path) -> None:
    ui = Recorder(pin=None)
    s = KeySession(with_pin(tmp_path), ui, pin=PIN)
    cred = s.make_credential(RP)
    s.get_assertion(RP, ZERO, allow=[cred.credential_id], uv=True)
    assert ui.pin_requests == [] and s.pin_prompts == 0


def test_no_pin_given_when_needed_is_a_clear_error(tmp_path: Path) -> None:
    s = KeySession(with_pin(tmp_path), Recorder(pin=None))
    with pytest.raises(UsageError, match="none was given"):
        s.make_credential(RP)


def test_uv_without_a_pin_on_the_key_is_refused_before_sending(tmp_path: Path) -> None:
    s = KeySession(sim(tmp_path), Recorder())
    with pytest.raises(UsageError, match="needs a PIN"):
        s.make_credential(RP, uv=True)
    assert s.touches == 0


def test_unsupported_algorithm_is_a_usage_error_with_hint(tmp_path: Path) -> None:
    s = KeySession(sim(tmp_path))
    with pytest.raises(UsageError) as err:
        s.make_credential(RP, algorithms=(-257,))
    assert "ES256" in err.value.hint
    assert s.touches == 0


def test_exclude_list_refuses_a_second_enrollment(tmp_path: Path) -> None:
    s = KeySession(sim(tmp_path))
    cred = s.make_credential(RP)
    with pytest.raises(AlreadyEnrolled):
        s.make_credential(RP, exclude=[cred.credential_id])
    # another key's credential in the exclude list does not get in the way
    other = KeySession(sim(tmp_path, "other.json")).make_credential(RP)
    s.make_credential(RP, exclude=[other.credential_id])


def test_assertion_on_the_wrong_key(tmp_path: Path) -> None:
    cred = KeySession(sim(tmp_path, "a.json")).make_credential(RP)
    with pytest.raises(NotThisKey) as err:
        KeySession(sim(tmp_path, "b.json")).get_assertion(RP, ZERO, allow=[cred.credential_id])
    assert err.value.exit_code == 3 and err.value.hint


def test_cred_protect_is_recorded(tmp_path: Path) -> None:
    s = KeySession(with_pin(tmp_path), Recorder())
    cred = s.make_credential(RP, cred_protect=2)
    assert cred.cred_protect == 2


# ---------------------------------------------------------------------------- hmac-secret


def test_hmac_secret_is_stable_per_credential_and_salt_and_differs_with_uv(tmp_path: Path) -> None:
    s = KeySession(with_pin(tmp_path), Recorder())
    cred = s.make_credential(RP, hmac_secret=True)
    other = s.make_credential(RP, hmac_secret=True)
    assert cred.hmac_secret
    salt, salt2 = os.urandom(32), os.urandom(32)

    def out(cid: bytes, salt: bytes, uv: bool = False) -> bytes:
        a = s.get_assertion(RP, ZERO, allow=[cid], hmac_salt=salt, uv=uv)
        assert a.hmac_output is not None and len(a.hmac_output) == 32
        return a.hmac_output

    first = out(cred.credential_id, salt)
    assert out(cred.credential_id, salt) == first  # stable
    # ... and stable in a new session on a freshly opened device (a new key agreement)
    again = KeySession(open_device(f"sim:{tmp_path / 'key.json'}"), Recorder())
    assert again.get_assertion(RP, ZERO, allow=[cred.credential_id], hmac_salt=salt).hmac_output == first
    assert out(cred.credential_id, salt2) != first  # another salt
    assert out(other.credential_id, salt) != first  # another credential
    with_uv = out(cred.credential_id, salt, uv=True)
    assert with_uv != first  # UV selects the other secret
    assert out(cred.credential_id, salt, uv=True) == with_uv


def test_hmac_salt_must_be_32_bytes(tmp_path: Path) -> None:
    s = KeySession(sim(tmp_path))
    cred = s.make_credential(RP, hmac_secret=True)
    with pytest.raises(UsageError, match="32 bytes"):
        s.get_assertion(RP, ZERO, allow=[cred.credential_id], hmac_salt=b"short")


def test_assertion_repr_hides_the_hmac_output(tmp_path: Path) -> None:
    s = KeySession(sim(tmp_path))
    cred = s.make_credential(RP, hmac_secret=True)
    a = s.get_assertion(RP, ZERO, allow=[cred.credential_id], hmac_salt=os.urandom(32))
    assert a.hmac_output is not None
    assert a.hmac_output.hex() not in repr(a) and str(a.hmac_output) not in repr(a)


# ---------------------------------------------------------------------------- probe


def test_probe_finds_own_credentials_only_silently(tmp_path: Path) -> None:
    ui = Recorder()
    mine = KeySession(with_pin(tmp_path), ui)
    cred = mine.make_credential(RP)
    theirs = KeySession(sim(tmp_path, "other.json")).make_credential(RP)
    touches = mine.touches
    assert mine.probe(RP, cred.credential_id) is True
    assert mine.probe(RP, theirs.credential_id) is False
    assert mine.probe("another.rp", cred.credential_id) is False  # bound to its RP
    assert mine.probe(RP, os.urandom(64)) is False  # garbage
    assert mine.touches == touches  # no touch asked
    assert len(ui.pin_requests) == 1  # only the makeCredential needed the PIN


def test_probe_with_uv_finds_a_credprotect_3_credential(tmp_path: Path) -> None:
    """credProtect 3 (ssh verify-required) hides a credential from a silent probe; with `uv` the
    session's PIN finds it, still without a touch. A key without a PIN is not asked at all."""
    ui = Recorder()
    mine = KeySession(with_pin(tmp_path), ui)
    cred = mine.make_credential("ssh:", algorithms=(EDDSA,), cred_protect=3)
    touches = mine.touches
    assert mine.probe("ssh:", cred.credential_id) is False
    assert mine.probe("ssh:", cred.credential_id, uv=True) is True
    assert mine.touches == touches and len(ui.pin_requests) == 1  # the PIN asked once, kept
    other_ui = Recorder()
    other = KeySession(sim(tmp_path, "other.json"), other_ui)
    assert other.probe("ssh:", cred.credential_id, uv=True) is False
    assert other_ui.pin_requests == []


# ---------------------------------------------------------------------------- PIN


def test_pin_set_change_verify(tmp_path: Path) -> None:
    device = sim(tmp_path)
    s = KeySession(device)
    s.set_pin(PIN)
    assert s.pin_is_set
    s.verify_pin(PIN)
    s.change_pin(PIN, "new-pin-99")
    fresh = KeySession(open_device(f"sim:{tmp_path / 'key.json'}"))
    fresh.verify_pin("new-pin-99")
    with pytest.raises(PinInvalid):
        fresh.verify_pin(PIN)


@pytest.mark.parametrize("bad", ["123", "", "x" * 64, "ä" * 32])
def test_bad_new_pin_is_refused_before_sending(tmp_path: Path, bad: str) -> None:
    s = KeySession(sim(tmp_path))
    with pytest.raises(UsageError, match="too (short|long)"):
        s.set_pin(bad)
    assert not KeySession(sim(tmp_path)).pin_is_set


def test_short_pin_costs_no_retry(tmp_path: Path) -> None:
    s = KeySession(with_pin(tmp_path))
    with pytest.raises(UsageError):
        s.verify_pin("123")
    assert s.pin_retries() == 8


def test_wrong_pins_count_down_block_and_need_replug(tmp_path: Path) -> None:
    device = with_pin(tmp_path)
    s = KeySession(device)
    seen = []
    for _ in range(2):
        with pytest.raises(PinInvalid) as err:
            s.verify_pin("wrong-pin")
        seen.append(err.value.retries)
        assert err.value.exit_code == 6
        assert f"{err.value.retries} attempts left" in err.value.message
    assert seen == [7, 6]
    with pytest.raises(PinAuthBlocked) as blocked:
        s.verify_pin("wrong-pin")
    assert blocked.value.exit_code == 7 and "remove and re-insert the key" in blocked.value.message
    assert "(5 attempts left)" in blocked.value.message
    with pytest.raises(PinAuthBlocked):  # even the right PIN, until replugged
        s.verify_pin(PIN)
    device.replug()
    s = KeySession(device)
    s.verify_pin(PIN)
    assert s.pin_retries() == 8  # CTAP 2.1: a right PIN restores the full count


def test_eight_wrong_pins_block_for_good(tmp_path: Path) -> None:
    device = with_pin(tmp_path)
    errors: list[type[Exception]] = []
    for _ in range(12):
        s = KeySession(device)
        try:
            s.verify_pin("wrong-pin")
        except (PinInvalid, PinAuthBlocked, PinBlocked) as exc:
            errors.append(type(exc))
            if isinstance(exc, PinAuthBlocked):
                device.replug()
            if isinstance(exc, PinBlocked):
                break
    assert errors[-1] is PinBlocked
    with pytest.raises(PinBlocked) as err:
        KeySession(device).verify_pin(PIN)
    assert err.value.exit_code == 8 and "wipes every credential" in err.value.hint


def test_wrong_session_pin_is_not_reused(tmp_path: Path) -> None:
    ui = Recorder(pin="wrong-pin")
    s = KeySession(with_pin(tmp_path), ui)
    with pytest.raises(PinInvalid):
        s.make_credential(RP)
    ui.pin = PIN
    s.make_credential(RP)  # asked again, and the right one works
    assert len(ui.pin_requests) == 2


# ---------------------------------------------------------------------------- presence


@pytest.mark.parametrize("answer", [False, None], ids=["refused", "timeout"])
def test_refused_or_timed_out_touch_changes_nothing(tmp_path: Path, answer: bool | None) -> None:
    path = tmp_path / "key.json"
    device = sim(tmp_path)
    s = KeySession(device)
    cred = s.make_credential(RP, resident=True)
    before = path.read_bytes()
    device.presence = lambda: answer
    with pytest.raises(NoPresence) as err:
        s.make_credential(RP, resident=True, user_id=b"other")
    assert err.value.exit_code == 9
    with pytest.raises(NoPresence):
        s.get_assertion(RP, ZERO, allow=[cred.credential_id])
    assert path.read_bytes() == before


def test_open_session_closes_and_wraps(tmp_path: Path) -> None:
    with open_session(f"sim:{tmp_path / 'k.json'}", Recorder()) as s:
        assert s.make_credential(RP).credential_id


def test_key_removed_mid_session_is_no_device(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    s = KeySession(open_device(f"sim:{path}"))
    path.unlink()  # the software key's way of being pulled out
    with pytest.raises(NoDevice, match="removed during the operation"):
        s.make_credential(RP)


def test_a_refused_pin_is_dropped_by_the_cli_interaction_too(tmp_path: Path) -> None:
    from yktool.cli.prompts import CliInteraction

    ui = CliInteraction(pin="wrong-pin")
    s = KeySession(with_pin(tmp_path), ui)
    with pytest.raises(PinInvalid):
        s.make_credential(RP)
    assert ui.pin is None  # a retry would ask again, not burn another attempt with the same PIN


class U2fOnly(CtapDevice):
    """The software key seen through a transport without CBOR: what a U2F-only key looks like."""

    def __init__(self, inner: CtapDevice) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> int:
        return 0

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        return self.inner.call(cmd, data)

    @classmethod
    def list_devices(cls) -> Iterator[CtapDevice]:
        return iter(())


def test_a_u2f_only_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ToolFailed, match="could not be understood") as err:
        KeySession(U2fOnly(sim(tmp_path)))
    assert "FIDO2" in err.value.hint


def test_list_resident_filters_by_rp(tmp_path: Path) -> None:
    s = KeySession(with_pin(tmp_path), Recorder())
    a = s.make_credential("ssh:", resident=True, user_id=b"u1", user_name="alice", cred_protect=2)
    b = s.make_credential("other.example", resident=True, user_id=b"u2", user_name="bob")
    s.make_credential("ssh:")  # not discoverable: never listed
    assert [r.credential_id for r in s.list_resident("ssh:")] == [a.credential_id]
    listed = s.list_resident("ssh:")[0]
    assert listed.user_id == b"u1" and listed.cred_protect == 2
    assert listed.public_key == a.public_key
    assert {r.credential_id for r in s.list_resident()} == {a.credential_id, b.credential_id}
    assert s.list_resident("nobody.example") == []


def test_list_resident_needs_a_pin_on_the_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a PIN"):
        KeySession(sim(tmp_path)).list_resident()


class AlwaysUv(CtapDevice):
    """The software key behind a CTAP 2.1 "alwaysUv" policy: getAssertion without a PIN token is
    answered PUAT_REQUIRED, as a key configured that way does (no such key here)."""

    def __init__(self, inner: CtapDevice) -> None:
        self.inner = inner

    @property
    def capabilities(self) -> int:
        return self.inner.capabilities

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        from fido2 import cbor
        from fido2.ctap import CtapError
        from fido2.hid import CTAPHID

        if cmd == CTAPHID.CBOR and data[:1] == b"\x02":
            request = cbor.decode(data[1:])
            if isinstance(request, dict) and 6 not in request:
                return bytes([CtapError.ERR.PUAT_REQUIRED])
        return self.inner.call(cmd, data, event, on_keepalive)

    @classmethod
    def list_devices(cls) -> Iterator[CtapDevice]:
        return iter(())


def test_probe_of_an_always_uv_key_uses_the_pin(tmp_path: Path) -> None:
    device = with_pin(tmp_path)
    cred = KeySession(device, pin=PIN).make_credential(RP)
    ui = Recorder()
    s = KeySession(AlwaysUv(device), ui)
    assert s.probe(RP, cred.credential_id) is True
    assert s.probe(RP, os.urandom(64)) is False
    assert len(ui.pin_requests) == 1 and s.touches == 0
