"""yktool.agefile: what it encrypts, the real `age` decrypts; bad recipients/identities are clear."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from yktool import agefile
from yktool.errors import UsageError


def _ssh_key(tmp: Path, name: str, kind: str = "ed25519", passphrase: str = "") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", f"{name}@test", "-f", str(tmp / name)], check=True
    )
    return tmp / name


def _age_identity(tmp: Path, name: str) -> tuple[Path, str]:
    path = tmp / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = next(ln.split(": ", 1)[1] for ln in path.read_text().splitlines() if ln.startswith("# public key: "))
    return path, public


def test_real_age_decrypts_for_ssh_and_x25519_recipients(tmp_path: Path) -> None:
    host = _ssh_key(tmp_path, "host")
    ident, age_pub = _age_identity(tmp_path, "admin.txt")
    recipients = [
        agefile.parse_recipient((tmp_path / "host.pub").read_text(), source="host.pub"),
        agefile.parse_recipient(age_pub),
    ]
    assert recipients[0].comment == "host@test" and recipients[0].text.count(" ") == 1
    plain = b"root:AAAA,BBBB,es256,+presence\nodd \t line\n\xff raw byte\n"
    sealed = tmp_path / "yubikey-auth.age"
    sealed.write_bytes(agefile.encrypt(plain, recipients))
    for identity in (host, ident):
        out = subprocess.run(["age", "-d", "-i", str(identity), str(sealed)], check=True, capture_output=True).stdout
        assert out == plain
    # and pyrage reads it back with either identity
    for identity in (host, ident):
        ids = agefile.parse_identities(identity.read_bytes(), source=str(identity))
        assert agefile.decrypt(sealed.read_bytes(), ids, what="f") == plain


def test_wrong_identity_and_garbage(tmp_path: Path) -> None:
    host, other = _ssh_key(tmp_path, "host"), _ssh_key(tmp_path, "other")
    sealed = agefile.encrypt(b"x\n", [agefile.parse_recipient((tmp_path / "host.pub").read_text())])
    ids = agefile.parse_identities(other.read_bytes(), source="other")
    with pytest.raises(UsageError, match="not one of its recipients") as err:
        agefile.decrypt(sealed, ids, what="yubikey-auth.age")
    assert err.value.hint
    with pytest.raises(UsageError, match="not a readable age file"):
        agefile.decrypt(b"not age at all", agefile.parse_identities(host.read_bytes(), source="h"), what="f")
    with pytest.raises(UsageError, match="no identity found"):
        agefile.parse_identities(b"hello", source="x")
    locked = _ssh_key(tmp_path, "locked", passphrase="secret-pass")
    with pytest.raises(UsageError, match="passphrase-protected") as err:
        agefile.parse_identities(locked.read_bytes(), source="locked")
    assert "secret-pass" not in err.value.message + err.value.hint


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ user", "ssh-rsa"),
        ("ecdsa-sha2-nistp256 AAAA x", "not supported"),
        ("age1notreallyakey", "not a valid age recipient"),
        ("ssh-ed25519 !!!notbase64", "not a valid ssh-ed25519"),
        ("sk-ssh-ed25519@openssh.com AAAA x", "not supported"),
    ],
)
def test_bad_recipients(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as err:
        agefile.parse_recipient(text, source="--age")
    assert "ssh-ed25519" in err.value.hint and "age1" in err.value.hint


def test_recipients_file_and_secrets_entry(tmp_path: Path) -> None:
    _ssh_key(tmp_path, "h1")
    _ssh_key(tmp_path, "h2")
    text = "# hosts\n" + (tmp_path / "h1.pub").read_text() + "\n" + (tmp_path / "h2.pub").read_text()
    recips = agefile.parse_recipients_text(text, source="hosts.pub")
    assert len(recips) == 2
    entry = agefile.secrets_nix_entry("yubikey-auth.age", recips)
    assert entry.startswith('"yubikey-auth.age".publicKeys = [ "ssh-ed25519 ')
    subprocess.run(["nix-instantiate", "--parse", "-E", "{ " + entry + " }"], check=True, capture_output=True)
    with pytest.raises(UsageError, match="no recipient"):
        agefile.parse_recipients_text("# nothing\n", source="empty.pub")


def test_header_tags_match_age(tmp_path: Path) -> None:
    _ssh_key(tmp_path, "h")
    _ident, age_pub = _age_identity(tmp_path, "a.txt")
    r = agefile.parse_recipient((tmp_path / "h.pub").read_text())
    # the real age command writes the file; yktool reads its header
    out = tmp_path / "f.age"
    subprocess.run(["age", "-R", str(tmp_path / "h.pub"), "-r", age_pub, "-o", str(out)], input=b"x", check=True)
    tags, x = agefile.header_recipients(out.read_bytes())
    assert tags == [agefile.ssh_tag(r)] and x == 1
