"""FIDO2 enrollment of LUKS2 images with software keys, real cryptsetup and systemd-cryptenroll.

Every image lives inside the test's --root, so the key registry (/etc/yktool/keys.toml) and the
journal (/var/lib/yktool) are written there and nowhere else.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Event
from typing import Any

import pytest
from fido2.ctap import STATUS

from tests.conftest import ChildRecorder, CliCall, CliResult
from tests.fixtures.fido import TEST_PIN, SimKey
from tests.fixtures.luks import LuksImage, make_image
from yktool.fido.devices import open_sim
from yktool.fido.session import KeySession
from yktool.host import Host
from yktool.luks.fido2 import RP_ID, derive_passphrase
from yktool.luks.header import read_header
from yktool.luks.tokens import Fido2Token

YKTOOL = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "yktool"


@pytest.fixture
def vol(root: Path) -> LuksImage:
    """A LUKS2 image inside the root (passphrase file next to it)."""
    return make_image(root / "vol")


def inside(root: Path, path: Path) -> str:
    return "/" + str(path.relative_to(root))


def enroll(
    cli: CliCall,
    root: Path,
    spec: str,
    image: LuksImage,
    *extra: object,
    input: str | None = None,
    json_out: bool = True,
    passphrase_stdin: bool = False,
) -> CliResult:
    args: list[object] = ["--root", root, "--device", spec] + (["--json"] if json_out else [])
    args += ["luks", "enroll-fido2", inside(root, image.path)]
    if not passphrase_stdin:
        args += ["--unlock-key-file", inside(root, image.key_file)]
    return cli(*args, *extra, input=input)


def fido2_tokens(image: LuksImage) -> list[Fido2Token]:
    header = read_header(Host(), str(image.path))
    return [t for t in header.tokens_of_type("systemd-fido2") if isinstance(t, Fido2Token)]


def exported(image: LuksImage, token_id: int) -> dict[str, object]:
    out = subprocess.run(
        ["cryptsetup", "token", "export", "--token-id", str(token_id), str(image.path)], check=True, capture_output=True
    ).stdout
    data: dict[str, object] = json.loads(out)
    return data


def cryptenroll_list(image: LuksImage) -> list[tuple[int, str]]:
    out = subprocess.run(["systemd-cryptenroll", str(image.path)], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return [(int(r[0]), r[1]) for r in rows]


def key_passphrase(spec: str, token: Fido2Token, pin: str | None = None) -> bytes:
    """The slot passphrase the key derives for `token`, asked directly through KeySession."""
    return derive_passphrase(KeySession(open_sim(spec.removeprefix("sim:")), pin=pin), token)


def status(cli: CliCall, root: Path, image: LuksImage, spec: str | None = None) -> dict[str, object]:
    args: list[object] = ["--root", root, "--json"] + (["--device", spec] if spec else [])
    r = cli(*args, "luks", "status", inside(root, image.path))
    assert r.exit_code == 0, r.output
    data: dict[str, object] = json.loads(r.stdout)
    return data


# ------------------------------------------------------------------------------------ main path
def test_enroll_lists_as_fido2_opens_backup_and_status_names_keys(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey
) -> None:
    a, b = sim_key("a"), sim_key("b")
    r = enroll(cli, root, a, vol, "--nickname", "primary")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["backend"] == "native" and out["keyslot"] == 1 and out["token"] == 0
    # systemd's own tool sees a fido2 slot
    assert cryptenroll_list(vol) == [(0, "password"), (1, "fido2")]
    token = exported(vol, 0)
    assert list(token) == [
        "type",
        "keyslots",
        "fido2-credential",
        "fido2-salt",
        "fido2-rp",
        "fido2-clientPin-required",
        "fido2-up-required",
        "fido2-uv-required",
    ]
    assert token["type"] == "systemd-fido2" and token["keyslots"] == ["1"] and token["fido2-rp"] == RP_ID
    assert len(base64.b64decode(str(token["fido2-salt"]), validate=True)) == 32
    assert base64.b64decode(str(token["fido2-credential"]), validate=True)
    assert token["fido2-up-required"] is True and token["fido2-clientPin-required"] is False
    # the keyslot is systemd's minimal PBKDF
    slot = read_header(Host(), str(vol.path)).keyslots[1]
    assert (slot.kdf, slot.iterations, slot.kdf_hash) == ("pbkdf2", 1000, "sha512")
    # the passphrase is the base64 of the key's hmac-secret output; cryptsetup's own answer
    passphrase = key_passphrase(a, fido2_tokens(vol)[0])
    assert len(base64.b64decode(passphrase, validate=True)) == 32
    assert vol.opens_with(passphrase) and vol.opens_with(vol.passphrase)

    t = cli("--root", root, "--device", a, "luks", "test-unlock", inside(root, vol.path))
    assert t.exit_code == 0, t.output
    assert "token 0 (systemd-fido2, keyslot 1): opens" in t.stdout

    # a backup key: its own slot, the first one stays
    r = enroll(cli, root, b, vol, "--nickname", "backup")
    assert r.exit_code == 0, r.output
    assert cryptenroll_list(vol) == [(0, "password"), (1, "fido2"), (2, "fido2")]
    t = cli("--root", root, "--device", b, "--json", "luks", "test-unlock", inside(root, vol.path))
    assert t.exit_code == 0, t.output
    results = {x["token"]: x["status"] for x in json.loads(t.stdout)["tokens"]}
    assert results == {0: "not-tested", 1: "opens"}
    t = cli("--root", root, "--device", a, "--json", "luks", "test-unlock", inside(root, vol.path))
    assert {x["token"]: x["status"] for x in json.loads(t.stdout)["tokens"]} == {0: "opens", 1: "not-tested"}
    assert vol.opens_with(key_passphrase(b, fido2_tokens(vol)[1]))

    # status names which slot is which key: from the registry ...
    data = status(cli, root, vol)
    owners = data["fido2_owners"]
    assert isinstance(owners, dict)
    assert (owners["0"]["registry"], owners["1"]["registry"]) == ("primary", "backup")
    text = cli("--root", root, "luks", "status", inside(root, vol.path)).stdout
    assert "key: key 'primary' (registry)" in text and "key: key 'backup' (registry)" in text
    registry = (root / "etc/yktool/keys.toml").read_text()
    assert "backup" in registry and f'uuid = "{data["uuid"]}"' in registry and "keyslot = 2" in registry

    # ... and without it: the key present answers a silent probe for its own token only
    (root / "etc/yktool/keys.toml").unlink()
    for spec, mine, other in ((a, "0", "1"), (b, "1", "0")):
        owners = status(cli, root, vol, spec)["fido2_owners"]
        assert isinstance(owners, dict)
        assert owners[mine]["registry"] is None and owners[mine]["probe"] is True
        assert owners[other]["probe"] is False
        text = cli("--root", root, "--device", spec, "luks", "status", inside(root, vol.path)).stdout
        assert f"the key at {spec}" in text and "not the key present" in text
    assert vol.opens_with(vol.passphrase)


def test_same_key_twice_is_reported_not_duplicated(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a = sim_key("a")
    assert enroll(cli, root, a, vol).exit_code == 0
    before = vol.header_digest()
    r = enroll(cli, root, a, vol)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["already_enrolled"] is True and out["changed"] is False and out["token"] == 0
    assert vol.header_digest() == before
    assert len(fido2_tokens(vol)) == 1
    text = enroll(cli, root, a, vol, json_out=False)
    assert "already enrolled" in text.stdout


# ------------------------------------------------------------------------------------ the flags
@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        ((), (True, True, False)),  # key has a PIN: PIN by default, as systemd
        (("--no-pin",), (False, True, False)),
        (("--with-pin", "--no-up"), (True, False, False)),
        (("--no-pin", "--no-up"), (False, False, False)),
    ],
)
def test_token_flags_match_what_was_asked_and_unlock_follows_them(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey, flags: tuple[str, ...], expect: tuple[bool, bool, bool]
) -> None:
    a = sim_key("a", pin=TEST_PIN)
    r = enroll(cli, root, a, vol, *flags, "--pin-stdin", input=f"{TEST_PIN}\n")
    assert r.exit_code == 0, r.output
    token = exported(vol, 0)
    assert (token["fido2-clientPin-required"], token["fido2-up-required"], token["fido2-uv-required"]) == expect
    pin, up, _uv = expect
    t = cli(
        "--root",
        root,
        "--device",
        a,
        "luks",
        "test-unlock",
        inside(root, vol.path),
        "--pin-stdin",
        input=f"{TEST_PIN}\n" if pin else "",
    )
    assert t.exit_code == 0, t.output
    assert "opens" in t.stdout
    assert ("Touch your key" in t.stderr) == up  # one touch exactly when presence is required


def test_with_uv_needs_built_in_verification(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a = sim_key("a", pin=TEST_PIN)
    before = vol.path.read_bytes()
    r = enroll(cli, root, a, vol, "--with-uv", "--pin-stdin", input=f"{TEST_PIN}\n", json_out=False)
    assert r.exit_code == 2
    assert "no built-in user verification" in r.stderr and "--with-pin" in r.stderr
    assert vol.path.read_bytes() == before


def test_pin_token_unlocks_with_uv_and_a_flag_mismatch_is_explained(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey
) -> None:
    a = sim_key("a", pin=TEST_PIN)
    r = enroll(cli, root, a, vol, "--with-pin", "--pin-stdin", input=f"{TEST_PIN}\n")
    assert r.exit_code == 0, r.output
    token = fido2_tokens(vol)[0]
    assert token.pin_required
    with_uv = key_passphrase(a, token, TEST_PIN)
    token.pin_required = False
    without_uv = key_passphrase(a, token)
    assert with_uv != without_uv  # the key derives another secret with UV
    assert vol.opens_with(with_uv) and not vol.opens_with(without_uv)

    # someone flips the token's PIN flag: test-unlock explains instead of crashing
    raw = exported(vol, 0)
    raw["fido2-clientPin-required"] = False
    subprocess.run(
        ["cryptsetup", "token", "import", "--token-id", "0", "--token-replace", str(vol.path)],
        input=json.dumps(raw).encode(),
        check=True,
        capture_output=True,
    )
    t = cli("--root", root, "--device", a, "luks", "test-unlock", inside(root, vol.path))
    assert t.exit_code == 1
    assert "does not open the keyslot" in t.stdout and "different secret with UV" in t.stdout
    assert "enroll-fido2" in t.stderr  # the hint fits a FIDO2 failure
    assert "Traceback" not in t.output


# ---------------------------------------------------------------------------- systemd backend
def test_systemd_backend_plan_shows_the_command_it_runs(cli: CliCall, root: Path, vol: LuksImage) -> None:
    r = cli(
        "--root",
        root,
        "--device",
        "hid:/dev/hidraw7",
        "--json",
        "--dry-run",
        "luks",
        "enroll-fido2",
        inside(root, vol.path),
        "--no-up",
        "--backend",
        "systemd",
    )
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["backend"] == "systemd"
    assert plan["command"] == [
        "systemd-cryptenroll",
        "--fido2-device=/dev/hidraw7",
        "--fido2-with-client-pin=yes",
        "--fido2-with-user-presence=no",
        "--fido2-with-user-verification=no",
        "--fido2-credential-algorithm=es256",
        "--unlock-key-file=/dev/fd/<memfd 0>",
        str(vol.path),
    ]
    assert [s["id"] for s in plan["steps"]] == ["check", "enroll", "prove", "record"]


def test_systemd_backend_runs_through_host_with_secrets_in_memory(
    root: Path, vol: LuksImage, child_recorder: ChildRecorder
) -> None:
    from yktool.errors import ToolFailed
    from yktool.luks.fido2 import run_systemd_enroll

    before = vol.path.read_bytes()
    host = Host(root)
    with pytest.raises(ToolFailed) as err:
        run_systemd_enroll(
            host,
            inside(root, vol.path),
            "/dev/hidraw-none",
            vol.passphrase,
            b"pin-9876-distinct",
            pin_flag=True,
            up=True,
            uv=False,
            algorithm="eddsa",
        )
    assert "systemd-cryptenroll failed" in err.value.message and "FIDO2" in err.value.message
    [child] = [c for c in child_recorder.children if c.argv[0] == "systemd-cryptenroll"]
    assert child.argv[1:6] == [
        "--fido2-device=/dev/hidraw-none",
        "--fido2-with-client-pin=yes",
        "--fido2-with-user-presence=yes",
        "--fido2-with-user-verification=no",
        "--fido2-credential-algorithm=eddsa",
    ]
    assert child.argv[6].startswith("--unlock-key-file=/dev/fd/")
    assert "CREDENTIALS_DIRECTORY" in child.env  # the PIN as the credential fido2-pin
    child_recorder.assert_no_secret(vol.passphrase, "pin-9876-distinct")
    assert vol.path.read_bytes() == before


def test_systemd_backend_refuses_software_keys(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    before = vol.path.read_bytes()
    r = enroll(cli, root, sim_key("a"), vol, "--backend", "systemd", json_out=False)
    assert r.exit_code == 2
    assert "libfido2" in r.stderr and "--backend native" in r.stderr
    assert vol.path.read_bytes() == before


# ----------------------------------------------------------------------------- kill -9 and resume
def _run_yktool(root: Path, spec: str, image: LuksImage, fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("YKTOOL_FAULT", "YKTOOL_DEVICE")}
    if fault:
        env["YKTOOL_FAULT"] = fault
    return subprocess.run(
        [
            str(YKTOOL),
            "--root",
            str(root),
            "--device",
            spec,
            "luks",
            "enroll-fido2",
            inside(root, image.path),
            "--unlock-key-file",
            inside(root, image.key_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_killed_after_keyslot_is_finished_by_a_rerun(root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a = sim_key("a")
    killed = _run_yktool(root, a, vol, "after-keyslot")
    assert killed.returncode == 137, killed.stderr
    header = read_header(Host(), str(vol.path))
    assert sorted(header.keyslots) == [0, 1] and header.tokens == {}  # the orphan slot
    assert vol.opens_with(vol.passphrase)
    assert (root / "var/lib/yktool/luks-fido2" / f"{header.uuid}.json").exists()
    shown = subprocess.run(
        [str(YKTOOL), "--root", str(root), "luks", "status", inside(root, vol.path)], capture_output=True, text=True
    ).stdout
    assert "interrupted" in shown
    assert "     1  fido2 " in shown  # the orphan is the key's slot, not a passphrase

    again = _run_yktool(root, a, vol, None)
    assert again.returncode == 0, again.stderr
    assert "finished" in again.stdout
    assert cryptenroll_list(vol) == [(0, "password"), (1, "fido2")]
    assert vol.opens_with(vol.passphrase)
    assert vol.opens_with(key_passphrase(a, fido2_tokens(vol)[0]))
    assert not (root / "var/lib/yktool/luks-fido2" / f"{header.uuid}.json").exists()
    assert "credential_id" in (root / "etc/yktool/keys.toml").read_text()


def test_killed_after_keyslot_then_another_key_removes_the_orphan(root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a, b = sim_key("a"), sim_key("b")
    assert _run_yktool(root, a, vol, "after-keyslot").returncode == 137
    assert vol.opens_with(vol.passphrase)
    again = _run_yktool(root, b, vol, None)
    assert again.returncode == 0, again.stderr
    assert "removed orphan keyslot 1" in again.stdout
    tokens = fido2_tokens(vol)
    assert len(tokens) == 1 and tokens[0].keyslots == [1]  # b's slot; a's orphan is gone
    assert vol.opens_with(key_passphrase(b, tokens[0])) and vol.opens_with(vol.passphrase)
    assert cryptenroll_list(vol) == [(0, "password"), (1, "fido2")]


def test_killed_after_token_import_is_tidied_up(root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a = sim_key("a")
    assert _run_yktool(root, a, vol, "after-token").returncode == 137
    assert vol.opens_with(vol.passphrase)
    again = _run_yktool(root, a, vol, None)
    assert again.returncode == 0, again.stderr
    assert "already enrolled" in again.stdout
    assert len(fido2_tokens(vol)) == 1
    assert "keyslot = 1" in (root / "etc/yktool/keys.toml").read_text()


# ------------------------------------------------------------------------------------ bad input
def test_wrong_pin_shows_retries_and_changes_nothing(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a = sim_key("a", pin=TEST_PIN)
    before = vol.path.read_bytes()
    r = enroll(cli, root, a, vol, "--pin-stdin", input="9999\n", json_out=False)
    assert r.exit_code == 6, r.output
    assert "wrong PIN (7 attempts left)" in r.stderr and "hint:" in r.stderr
    assert vol.path.read_bytes() == before
    assert not (root / "etc/yktool/keys.toml").exists()


def test_wrong_passphrase_changes_nothing(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    before = vol.path.read_bytes()
    r = enroll(cli, root, sim_key("a"), vol, input="not-the-passphrase\n", json_out=False, passphrase_stdin=True)
    assert r.exit_code == 2
    assert "does not open" in r.stderr
    assert vol.path.read_bytes() == before


def test_no_free_keyslot(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    for n in range(1, 32):
        subprocess.run(
            [
                "cryptsetup",
                "luksAddKey",
                "--batch-mode",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
                str(vol.key_file),
                "--key-slot",
                str(n),
                str(vol.path),
                str(vol.key_file),
            ],
            check=True,
            capture_output=True,
        )
    before = vol.path.read_bytes()
    r = enroll(cli, root, sim_key("a"), vol, json_out=False)
    assert r.exit_code == 4
    assert "no free keyslot" in r.stderr and "wipe" in r.stderr
    assert vol.path.read_bytes() == before


def test_luks1_is_refused_with_how_to_convert(cli: CliCall, root: Path, sim_key: SimKey) -> None:
    old = make_image(root / "vol", "old.img", "luks1")
    before = old.path.read_bytes()
    r = enroll(cli, root, sim_key("a"), old, json_out=False)
    assert r.exit_code == 2
    assert "LUKS1" in r.stderr and "cryptsetup convert" in r.stderr
    assert old.path.read_bytes() == before


def test_no_touch_changes_nothing(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    before = vol.path.read_bytes()
    r = cli(
        "--root",
        root,
        "--device",
        sim_key("a"),
        "luks",
        "enroll-fido2",
        inside(root, vol.path),
        "--unlock-key-file",
        inside(root, vol.key_file),
        env={"YKTOOL_SIM_PRESENCE": "timeout"},
    )
    assert r.exit_code == 9, r.output
    assert "not touched" in r.stderr
    assert vol.path.read_bytes() == before


def test_key_removed_mid_enrollment_changes_nothing(root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    """The key is pulled right after makeCredential, before the assertion (its state file goes)."""
    from fido2.ctap import CtapDevice

    from yktool.errors import NoDevice
    from yktool.fido.softkey import SoftKey
    from yktool.luks.fido2 import Fido2Options, plan_enroll_fido2

    spec = sim_key("a")
    path = Path(spec.removeprefix("sim:"))

    class PulledAfterMakeCredential(CtapDevice):
        def __init__(self) -> None:
            self.inner = SoftKey(path, create=False)

        @property
        def capabilities(self) -> int:
            return int(self.inner.capabilities)

        def call(
            self,
            cmd: int,
            data: bytes = b"",
            event: Event | None = None,
            on_keepalive: Callable[[STATUS], None] | None = None,
        ) -> bytes:
            out = self.inner.call(cmd, data, event, on_keepalive)
            if data[:1] == b"\x01":  # authenticatorMakeCredential answered: pull the key
                path.unlink()
            return out

        @classmethod
        def list_devices(cls) -> Iterator[CtapDevice]:
            return iter(())

    before = vol.path.read_bytes()
    host = Host(root)
    op = plan_enroll_fido2(host, inside(root, vol.path), spec, Fido2Options())
    op.unlock = vol.passphrase
    op.session = KeySession(PulledAfterMakeCredential())
    with pytest.raises(NoDevice) as err:
        op.plan.apply()
    assert "removed" in err.value.message and err.value.hint
    assert vol.path.read_bytes() == before
    assert not (root / "etc/yktool/keys.toml").exists()


def test_key_without_hmac_secret(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key whose getInfo lists no hmac-secret (a thin wrapper around the software key)."""
    from fido2 import cbor
    from fido2.ctap import CtapDevice

    import yktool.fido.devices as devices

    real_open = devices.open_sim

    class NoHmac(CtapDevice):
        def __init__(self, inner: CtapDevice) -> None:
            self.inner = inner

        @property
        def capabilities(self) -> int:
            return int(self.inner.capabilities)

        def call(
            self,
            cmd: int,
            data: bytes = b"",
            event: Event | None = None,
            on_keepalive: Callable[[STATUS], None] | None = None,
        ) -> bytes:
            out = self.inner.call(cmd, data, event, on_keepalive)
            if data[:1] == b"\x04" and out[:1] == b"\x00":  # authenticatorGetInfo
                info: Any = cbor.decode(out[1:])
                info[2] = [e for e in info[2] if e != "hmac-secret"]
                out = b"\x00" + cbor.encode(info)
            return out

        def close(self) -> None:
            return None

        @classmethod
        def list_devices(cls) -> Iterator[CtapDevice]:
            return iter(())

    monkeypatch.setattr(devices, "open_sim", lambda p, *a, **k: NoHmac(real_open(p, *a, **k)))
    before = vol.path.read_bytes()
    r = enroll(cli, root, sim_key("a"), vol, json_out=False)
    assert r.exit_code == 2, r.output
    assert "no hmac-secret" in r.stderr and "hint:" in r.stderr
    assert vol.path.read_bytes() == before


# ------------------------------------------------------------------------------------- secrets
def test_no_secret_in_any_child_or_output(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey, child_recorder: ChildRecorder
) -> None:
    a = sim_key("a", pin=TEST_PIN)
    r = enroll(cli, root, a, vol, "--pin-stdin", input=f"{TEST_PIN}\n")
    assert r.exit_code == 0, r.output
    t = cli(
        "--root",
        root,
        "--device",
        a,
        "--json",
        "luks",
        "test-unlock",
        inside(root, vol.path),
        "--pin-stdin",
        input=f"{TEST_PIN}\n",
    )
    assert t.exit_code == 0, t.output
    s = cli("--root", root, "--device", a, "--json", "luks", "status", inside(root, vol.path))
    passphrase = key_passphrase(a, fido2_tokens(vol)[0], TEST_PIN)
    hmac_hex = base64.b64decode(passphrase).hex()
    assert any(c.argv[0] == "cryptsetup" for c in child_recorder.children)
    child_recorder.assert_no_secret(vol.passphrase, passphrase, hmac_hex)
    for blob in (r.output, t.output, s.output):
        for secret in (vol.passphrase.decode(), passphrase.decode(), hmac_hex):
            assert secret not in blob
    # the PIN is never on a command line (a 4-digit PIN could appear by chance in /dev/fd numbers)
    assert not any(TEST_PIN in " ".join(c.argv[1:]) for c in child_recorder.children)
    for f in (root / "etc/yktool/keys.toml",):
        assert passphrase.decode() not in f.read_text()


def test_test_unlock_wrong_pin_shows_retries_exit_6(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a = sim_key("a", pin=TEST_PIN)
    assert enroll(cli, root, a, vol, "--with-pin", "--pin-stdin", input=f"{TEST_PIN}\n").exit_code == 0
    t = cli("--root", root, "--device", a, "luks", "test-unlock", inside(root, vol.path), "--pin-stdin", input="9999\n")
    assert t.exit_code == 6, t.output
    assert "PIN wrong: wrong PIN (7 attempts left)" in t.stdout
    assert "Traceback" not in t.output


def test_wipe_of_a_fido2_slot_forgets_it_in_the_registry(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey
) -> None:
    a, b = sim_key("a"), sim_key("b")
    assert enroll(cli, root, a, vol, "--nickname", "primary").exit_code == 0
    assert enroll(cli, root, b, vol, "--nickname", "backup").exit_code == 0
    r = cli("--root", root, "--yes", "luks", "wipe", inside(root, vol.path), "--slot", "1")
    assert r.exit_code == 0, r.output
    registry = (root / "etc/yktool/keys.toml").read_text()
    assert "keyslot = 1" not in registry and "keyslot = 2" in registry
    owners = status(cli, root, vol)["fido2_owners"]
    assert isinstance(owners, dict) and [o["registry"] for o in owners.values()] == ["backup"]


def test_interrupted_run_never_removes_a_slot_it_did_not_add(root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    """Killed before luksAddKey finished; meanwhile the owner added a passphrase as that slot number."""
    a, b = sim_key("a"), sim_key("b")
    assert _run_yktool(root, a, vol, "after-keyslot").returncode == 137
    subprocess.run(["systemd-cryptenroll", "--wipe-slot=1", str(vol.path)], check=True, capture_output=True)
    other = b"the owner's second passphrase"
    r, w = os.pipe()
    os.write(w, other)
    os.close(w)
    subprocess.run(
        [
            "cryptsetup",
            "luksAddKey",
            "--batch-mode",
            "--key-slot",
            "1",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            str(vol.key_file),
            str(vol.path),
            "/dev/stdin",
        ],
        stdin=r,
        check=True,
        capture_output=True,
    )
    os.close(r)
    again = _run_yktool(root, b, vol, None)
    assert again.returncode == 0, again.stderr
    assert "left keyslot 1 alone" in again.stdout
    assert vol.opens_with(other) and vol.opens_with(vol.passphrase)
    assert [t.keyslots for t in fido2_tokens(vol)] == [[2]]


def test_eddsa_credential_opens(cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey) -> None:
    a = sim_key("a")
    r = enroll(cli, root, a, vol, "--algorithm", "eddsa")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["algorithm"] == "eddsa"
    assert vol.opens_with(key_passphrase(a, fido2_tokens(vol)[0]))


def test_orphan_slot_of_a_killed_run_is_not_a_passphrase_to_wipe_down_to(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey
) -> None:
    """The orphan keyslot a killed enrollment left opens only with the key's hmac-secret output:
    wiping the real passphrase down to it would lock the owner out, so it is refused."""
    assert _run_yktool(root, sim_key("a"), vol, "after-keyslot").returncode == 137
    before = vol.path.read_bytes()
    for how in (["--slot", "0"], ["--type", "password"]):
        r = cli("--root", root, "--yes", "luks", "wipe", inside(root, vol.path), *how)
        assert r.exit_code == 4, r.output
        assert "only by hardware" in r.stderr
        assert vol.path.read_bytes() == before
    assert vol.opens_with(vol.passphrase)


def test_failed_luksaddkey_leaves_no_journal(
    cli: CliCall, root: Path, vol: LuksImage, sim_key: SimKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """luksAddKey failing (fault injected) adds no slot, so no journal may claim one for later."""
    from yktool.errors import ToolFailed
    from yktool.luks import fido2

    def fails(*_a: object, **_k: object) -> None:
        raise ToolFailed("cryptsetup failed (exit 1): injected", "nothing was added")

    monkeypatch.setattr(fido2, "add_keyslot", fails)
    before = vol.path.read_bytes()
    r = enroll(cli, root, sim_key("a"), vol, json_out=False)
    assert r.exit_code == 5, r.output
    assert vol.path.read_bytes() == before
    assert not list((root / "var/lib/yktool/luks-fido2").glob("*.json"))


# ------------------------------------------------------------- the proof is the boot's derivation
@pytest.mark.parametrize(
    ("asked", "written"),
    [
        ("--no-pin", True),  # systemd#31443's shape: the secret made without UV, the token says "PIN"
        ("--with-pin", False),  # the reverse: made with UV, the token says "no PIN"
    ],
)
def test_a_token_whose_flags_differ_from_how_its_secret_was_made_is_refused_and_rolled_back(
    cli: CliCall,
    root: Path,
    vol: LuksImage,
    sim_key: SimKey,
    monkeypatch: pytest.MonkeyPatch,
    asked: str,
    written: bool,
) -> None:
    """The enroller derives the secret one way and writes a token that makes systemd-cryptsetup
    derive it the other way (what systemd-cryptenroll 252-255 does on CTAP 2.1 keys). The proof
    derives as boot will, from the token in the header, so the slot is refused, and it and its
    token are removed: the header has its old keyslots only, no token, no journal, no registry."""
    import yktool.luks.fido2 as lf

    real_token_json = lf.token_json

    def mismatched(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return real_token_json(*args, **{**kwargs, "pin": written})

    monkeypatch.setattr(lf, "token_json", mismatched)
    a = sim_key("a", pin=TEST_PIN)
    before = read_header(Host(), str(vol.path))
    r = enroll(cli, root, a, vol, asked, "--pin-stdin", input=f"{TEST_PIN}\n", json_out=False)
    assert r.exit_code != 0, r.output
    err = r.stderr
    assert "does not open" in err and "systemd-cryptsetup" in err and "removed again" in err, err
    assert "Traceback" not in r.output
    after = read_header(Host(), str(vol.path))
    assert sorted(after.keyslots) == sorted(before.keyslots) and after.tokens == {}
    assert vol.opens_with(vol.passphrase)
    assert not (root / "etc/yktool/keys.toml").exists() or "luks" not in (root / "etc/yktool/keys.toml").read_text()
    assert not any((root / "var/lib/yktool").rglob("*.json")) if (root / "var/lib/yktool").exists() else True

    # the same key enrolls fine once the token says what the secret was made with
    monkeypatch.setattr(lf, "token_json", real_token_json)
    r = enroll(cli, root, a, vol, asked, "--pin-stdin", input=f"{TEST_PIN}\n")
    assert r.exit_code == 0, r.output


def test_the_default_backend_is_native_for_usb_keys_too(cli: CliCall, root: Path, vol: LuksImage) -> None:
    """systemd-cryptenroll's PIN tokens do not open on CTAP 2.1 keys (systemd#31443): a hid: key
    goes through yktool's own enrollment unless --backend systemd is asked for."""
    r = cli(
        "--root",
        root,
        "--device",
        "hid:/dev/hidraw7",
        "--json",
        "--dry-run",
        "luks",
        "enroll-fido2",
        inside(root, vol.path),
    )
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["backend"] == "native" and not plan["command"]
    assert [s["id"] for s in plan["steps"]] == ["check", "enroll", "keyslot", "token", "prove", "record"]


def test_replace_keeps_the_lost_keys_token_when_the_new_keys_proof_fails(
    scratch: Path, cli: CliCall, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`replace --lost primary` enrolls the new key first; its token says "no PIN" while its
    secret was made with the PIN, so boot would never open it: the proof refuses it, the new slot
    goes again, and the lost key's keyslot and token stay (nothing is revoked on that proof)."""
    import shutil

    import yktool.luks.fido2 as lf
    from tests.flows_support import demo_pin, passphrase_opens, spec
    from yktool.demo import IMAGE, KEYS, PASSPHRASE, ROOT

    real_token_json = lf.token_json
    monkeypatch.setattr(lf, "token_json", lambda *a, **kw: real_token_json(*a, **{**kw, "pin": not kw["pin"]}))
    image = Host(scratch / ROOT).path(IMAGE)
    before = read_header(Host(), str(image))
    shutil.move(scratch / KEYS / "primary.json", scratch / "finder-primary.json")  # lost
    r = cli(
        "--root",
        scratch / ROOT,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--new-pin-stdin",
        "--unlock-key-file",
        str(PASSPHRASE),
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code != 0, r.output
    assert "does not open" in r.output and "removed again" in r.output, r.output
    assert "Traceback" not in r.output
    after = read_header(Host(), str(image))
    assert sorted(after.keyslots) == sorted(before.keyslots)
    assert {t.credential for t in after.tokens_of_type("systemd-fido2") if isinstance(t, Fido2Token)} == {
        t.credential for t in before.tokens_of_type("systemd-fido2") if isinstance(t, Fido2Token)
    }
    assert passphrase_opens(scratch)
