"""yktool's OpenSSH sk encoders against the real ssh-keygen, with keys made by `cryptography`.

These need no authenticator: the software key's tests are in test_ssh_keygen/sign/download.
Here the private half is a local key standing in for the authenticator's, so the encoders
(public blob, key-handle file, sk signature, SSHSIG) are checked byte for byte by ssh-keygen.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from yktool.errors import UsageError
from yktool.ssh.enroll import parse_options
from yktool.ssh.keys import ECDSA_SK, ED25519_SK, PRIVATE_BEGIN, SkPrivateKey, SkPublicKey, sk_suffix
from yktool.ssh.sshsig import armor, client_data_hash, parse_armored, signed_data, sk_signature, sshsig_blob
from yktool.ssh.wire import Reader, mpint

Local = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(tmp)}


def _local_key(key_type: str, application: str = "ssh:") -> tuple[Local, SkPublicKey]:
    if key_type == ED25519_SK:
        priv: Local = ed25519.Ed25519PrivateKey.generate()
        raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        priv = ec.generate_private_key(ec.SECP256R1())
        raw = priv.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return priv, SkPublicKey(key_type, raw, application)


def _sign_as_authenticator(priv: Local, application: str, flags: int, counter: int, cdh: bytes) -> bytes:
    auth_data = hashlib.sha256(application.encode()).digest() + bytes([flags]) + struct.pack(">I", counter)
    if isinstance(priv, ed25519.Ed25519PrivateKey):
        return priv.sign(auth_data + cdh)
    return priv.sign(auth_data + cdh, ec.ECDSA(hashes.SHA256()))


def _ssh_keygen(tmp: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ssh-keygen", *args], input=input, capture_output=True, env=_env(tmp), check=False, timeout=30
    )


@pytest.mark.parametrize(("key_type", "label"), [(ED25519_SK, "(ED25519-SK)"), (ECDSA_SK, "(ECDSA-SK)")])
@pytest.mark.parametrize("flags", [0x00, 0x01, 0x05, 0x21, 0x25])
def test_key_file_read_back_by_ssh_keygen(tmp_path: Path, key_type: str, label: str, flags: int) -> None:
    _, public = _local_key(key_type, "ssh:work")
    key = SkPrivateKey(public, flags, os.urandom(80), "alice@ws1 — ключ")
    path = tmp_path / "id"
    path.write_bytes(key.to_file())
    path.chmod(0o600)
    shown = _ssh_keygen(tmp_path, "-v", "-y", "-f", str(path))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == key.pub_file()
    assert f'sk_application: "ssh:work", sk_flags 0x{flags:02x}' in shown.stderr.decode()
    listed = _ssh_keygen(tmp_path, "-l", "-f", str(path))
    assert listed.stdout.decode().split() == ["256", public.fingerprint, "alice@ws1", "—", "ключ", label]
    assert SkPrivateKey.from_file(key.to_file()) == key


@pytest.mark.parametrize("key_type", [ED25519_SK, ECDSA_SK])
def test_key_file_is_what_ssh_keygen_writes(tmp_path: Path, key_type: str) -> None:
    """ssh-keygen -c rewrites the file with its own writer; only the random check bytes differ."""
    _, public = _local_key(key_type)
    ours = SkPrivateKey(public, 0x21, os.urandom(64), "new comment")
    path = tmp_path / "id"
    path.write_bytes(SkPrivateKey(public, 0x21, ours.key_handle, "old").to_file())
    path.chmod(0o600)
    res = _ssh_keygen(tmp_path, "-c", "-C", "new comment", "-f", str(path))
    assert res.returncode == 0, res.stderr

    def body(data: bytes) -> bytes:
        text = data.decode()
        return base64.b64decode("".join(text.split("\n")[1:-2]))

    theirs_body, ours_body = body(path.read_bytes()), body(ours.to_file())
    assert len(theirs_body) == len(ours_body)
    check_at = ours_body.index(ours.checkint().to_bytes(4, "big") * 2)
    assert theirs_body[:check_at] == ours_body[:check_at]
    assert theirs_body[check_at + 8 :] == ours_body[check_at + 8 :]
    # line wrapping and armor are byte for byte the same too
    lines_theirs = path.read_bytes().split(b"\n")
    assert [len(x) for x in lines_theirs] == [len(x) for x in ours.to_file().split(b"\n")]


@pytest.mark.parametrize("key_type", [ED25519_SK, ECDSA_SK])
@pytest.mark.parametrize("sig_flags", [0x01, 0x05, 0x00])
def test_sshsig_verified_by_ssh_keygen(tmp_path: Path, key_type: str, sig_flags: int) -> None:
    priv, public = _local_key(key_type)
    message = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nfirst commit\n"
    data = signed_data("git", message)
    raw = _sign_as_authenticator(priv, "ssh:", sig_flags, 42, client_data_hash(data))
    sig = armor(sshsig_blob(public, "git", sk_signature(public, raw, sig_flags, 42)))
    (tmp_path / "msg.sig").write_bytes(sig)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'alice@example.com namespaces="git" {public.line()}\n')
    verify = ["-Y", "verify", "-f", str(signers), "-I", "alice@example.com", "-s", str(tmp_path / "msg.sig")]
    good = _ssh_keygen(tmp_path, *verify, "-n", "git", input=message)
    assert good.returncode == 0, good.stderr
    assert b'Good "git" signature for alice@example.com' in good.stdout
    assert _ssh_keygen(tmp_path, *verify, "-n", "git", input=message + b"x").returncode != 0
    assert _ssh_keygen(tmp_path, *verify, "-n", "file", input=message).returncode != 0
    parsed = parse_armored(sig)
    assert (parsed.signature.flags, parsed.signature.counter, parsed.namespace) == (sig_flags, 42, "git")
    # and what ssh-keygen -Y sign would have written is 70-column armor
    lines = sig.decode().splitlines()
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----" and all(len(x) <= 70 for x in lines[1:-1])


def test_ecdsa_signature_is_mpint_pair() -> None:
    priv, public = _local_key(ECDSA_SK)
    der = _sign_as_authenticator(priv, "ssh:", 1, 1, b"\0" * 32)
    blob = sk_signature(public, der, 1, 1)
    reader = Reader(blob)
    assert reader.text() == ECDSA_SK
    inner = Reader(reader.string())
    r, s = inner.mpint(), inner.mpint()
    inner.done()
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    assert (r, s) == decode_dss_signature(der)
    assert (reader.u8(), reader.u32()) == (1, 1)


def test_mpint_encoding() -> None:
    assert mpint(0) == b"\0\0\0\0"
    assert mpint(0x80) == b"\0\0\0\x02\x00\x80"
    assert mpint(0x7F) == b"\0\0\0\x01\x7f"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not-a-key", "encrypted", "padding"])
def test_damaged_key_file_is_a_usage_error(damage: str) -> None:
    _, public = _local_key(ED25519_SK)
    data = SkPrivateKey(public, 1, b"h" * 64, "c").to_file()
    if damage == "truncate":
        lines = data.split(b"\n")
        data = b"\n".join(lines[:2] + lines[-2:])
    elif damage == "garbage":
        data = data.replace(b"A", b"!", 3)
    elif damage == "not-a-key":
        data = b"ssh-ed25519 AAAA\n"
    elif damage == "encrypted":
        body = base64.b64decode(b"".join(data.split(b"\n")[1:-2]))
        body = body.replace(b"\0\0\0\x04none\0\0\0\x04none", b"\0\0\0\x0aaes256-ctr\0\0\0\x06bcrypt", 1)
        data = (PRIVATE_BEGIN + base64.b64encode(body).decode() + "\n-----END OPENSSH PRIVATE KEY-----\n").encode()
    else:
        flipped = bytearray(base64.b64decode(b"".join(data.split(b"\n")[1:-2])))
        flipped[-1] ^= 0xFF
        data = (
            PRIVATE_BEGIN + base64.b64encode(bytes(flipped)).decode() + "\n-----END OPENSSH PRIVATE KEY-----\n"
        ).encode()
    with pytest.raises(UsageError):
        SkPrivateKey.from_file(data)


def test_public_line_round_trip_and_errors() -> None:
    _, public = _local_key(ECDSA_SK, "ssh:x")
    assert SkPublicKey.parse_line(public.line("a b c") + "\n") == (public, "a b c")
    for bad in ["", "ssh-ed25519", "ssh-ed25519 !!!!", "sk-ssh-ed25519@openssh.com " + public.base64()]:
        with pytest.raises(UsageError):
            SkPublicKey.parse_line(bad)


@pytest.mark.parametrize(
    ("application", "user", "suffix"),
    [
        ("ssh:", b"\0" * 32, ""),
        ("ssh:work", b"\0" * 32, "work"),
        ("ssh:work", b"alice".ljust(32, b"\0"), "work_alice"),
        ("ssh:", b"alice".ljust(32, b"\0"), "alice"),
        ("ssh:w", b"../x".ljust(32, b"\0"), "w_2e2e2f78"),
    ],
)
def test_resident_file_suffix_like_ssh_keygen(application: str, user: bytes, suffix: str) -> None:
    assert sk_suffix(application, user) == suffix


@pytest.mark.parametrize(
    ("opts", "flags"),
    [
        ([], 0x01),
        (["resident"], 0x21),
        (["verify-required"], 0x05),
        (["no-touch-required"], 0x00),
        (["resident", "verify-required", "no-touch-required"], 0x24),
        (["RESIDENT"], 0x21),
    ],
)
def test_option_flags(opts: list[str], flags: int) -> None:
    assert parse_options(opts).flags == flags


@pytest.mark.parametrize(
    "opt", ["bogus", "resident=yes", "application=web:x", "user=" + "u" * 32, "device=/dev/x", "challenge=x"]
)
def test_unknown_or_bad_option(opt: str) -> None:
    with pytest.raises(UsageError):
        parse_options([opt])


@settings(max_examples=50, deadline=None)
@given(
    comment=st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=40),
    handle=st.binary(min_size=16, max_size=128),
    flags=st.integers(0, 255),
)
def test_key_file_round_trip(comment: str, handle: bytes, flags: int) -> None:
    public = SkPublicKey(ED25519_SK, b"\x11" * 32, "ssh:")
    key = SkPrivateKey(public, flags, handle, comment)
    data = key.to_file()
    assert SkPrivateKey.from_file(data) == key
    assert data == key.to_file()  # a pure function of the key: download can recreate it
