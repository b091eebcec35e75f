"""yktool pam register / pam check: merging, modes, atomicity, bad input, Nix output, traps."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import CliCall, CliResult
from tests.fixtures.fido import SimKey
from yktool.host import Host
from yktool.inventory import Registry
from yktool.pam.authfile import Authfile
from yktool.pam.host_facts import home_encryption, installed_version, read_users

ORIGIN = "pam://ws1"


def make_root(root: Path, *, hostname: str | None = "ws1") -> Path:
    (root / "etc").mkdir(exist_ok=True)
    if hostname:
        (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "alice:x:1000:1000::/home/alice:/bin/bash\n"
        "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"
    )
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def legacy_line(user: str) -> str:
    kh = base64.urlsafe_b64encode(os.urandom(64)).decode().rstrip("=")
    pk = "04" + os.urandom(64).hex()
    return f"{user}:{kh},{pk}"


# ------------------------------------------------------------------------- parse / merge
def test_parse_round_trips_bytes_and_reports_malformed() -> None:
    text = (
        "alice:AAAA,BBBB,es256,+presence\r\n\n  \n" + legacy_line("bob") + "\n"
        "carol:notbase64!,x,es256,+presence\n" + "dave\n" + "erin:" + "A" * 8
    )
    af = Authfile.parse(text)
    assert af.render() == text
    bad = {ln.lineno: ln.error for ln in af.malformed}
    assert set(bad) == {1, 5, 6, 7}  # short es256 key, bad base64, no credential, no key
    assert af.credentials_of("bob")[0].legacy
    assert any("line 5" in p for p in af.problems())


def test_merge_changes_only_the_target_line(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    key = sim_key("a")
    other = sim_key("b")
    # alice's existing line: a real credential from key b, so the merge appends to it
    assert (
        cli(
            "--root", root, "--device", other, "pam", "register", "--user", "alice", "--authfile", "/etc/mine"
        ).exit_code
        == 0
    )
    alice_line = (root / "etc/mine").read_text().rstrip("\n")
    before = (
        "zed:odd  \t\n"  # malformed: no credential
        + legacy_line("bob")
        + "\n"
        + "\n"
        + "  \t \n"
        + alice_line
        + " \r\n"  # CR and blanks at the end
        + "carol:"
        + alice_line.split(":", 1)[1]
        + "\n"
        + legacy_line("dave")
    )  # no final newline
    path = root / "etc/u2f_mappings"
    path.write_text(before)
    res = cli("--root", root, "--device", key, "pam", "register", "--user", "alice")
    assert res.exit_code == 0, res.output
    after = path.read_text()
    old_lines, new_lines = before.split("\n"), after.split("\n")
    assert len(old_lines) == len(new_lines)
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert changed == [4]
    assert new_lines[4].startswith(alice_line + ":")
    assert len(Authfile.parse(after).credentials_of("alice")) == 2
    assert "line 1" in res.stderr  # the malformed line is reported
    assert (root / "var/backups/yktool/etc").is_dir()
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_new_user_line_and_no_duplicate(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    key = sim_key("a")
    path = root / "etc/u2f_mappings"
    bob = legacy_line("bob")
    path.write_text(bob)  # no trailing newline
    assert cli("--root", root, "--device", key, "pam", "register", "--user", "root").exit_code == 0
    text = path.read_text()
    assert text.startswith(bob + "\n")
    assert text.split("\n")[1].startswith("root:") and text.endswith("\n")
    again = cli("--root", root, "--json", "--device", key, "pam", "register", "--user", "root")
    assert again.exit_code == 0
    data = json.loads(again.stdout)
    assert data["already_registered"] is True and data["changed"] is False
    assert path.read_text() == text


def test_user_file_mode_and_owner(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    res = cli(
        "--root",
        root,
        "--json",
        "--device",
        sim_key("a"),
        "pam",
        "register",
        "--user",
        "alice",
        "--authfile",
        "~",
        "--nickname",
        "yk5",
    )
    assert res.exit_code == 0, res.output
    f = root / "home/alice/.config/Yubico/u2f_keys"
    st = f.stat()
    assert st.st_mode & 0o777 == 0o600 and (st.st_uid, st.st_gid) == (1000, 1000)
    assert (root / "home/alice/.config").stat().st_uid == 1000
    data = json.loads(res.stdout)
    assert data["written_to"] == "/home/alice/.config/Yubico/u2f_keys"
    assert data["origin"] == ORIGIN and data["nickname"] == "yk5"
    assert "single key" in " ".join(data["warnings"])
    # recorded in the key registry
    reg = Registry.load(Host(root))
    ((key, entry),) = reg.enrollments("pam")
    assert key.nickname == "yk5" and entry["user"] == "alice" and entry["origin"] == ORIGIN
    cid = entry["credential_id"]
    assert Authfile.parse(f.read_text()).credentials_of("alice")[0].key_handle == cid


def test_origin_option_and_text_output(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    res = cli("--root", root, "--device", sim_key("a"), "pam", "register", "--user", "root", "--origin", "pam://fleet")
    assert res.exit_code == 0
    assert "origin=pam://fleet" in res.stdout
    assert "same origin=" in res.stderr


# ------------------------------------------------------------------------- bad input
def _assert_refused(res: CliResult, code: int, *words: str) -> None:
    out = res.output
    assert res.exit_code == code, out
    assert "error:" in out and "hint:" in out and "Traceback" not in out
    for w in words:
        assert w in out


def test_bad_inputs_change_nothing(sim_key: SimKey, cli: CliCall, root: Path, tmp_path: Path) -> None:
    make_root(root)
    key = sim_key("a")
    mapping = root / "etc/u2f_mappings"
    # target user's own line malformed: refused, line number named
    mapping.write_text("bob:AAAA,BBBB,es256\nroot:xx\n")
    snap = snapshot(root)
    _assert_refused(cli("--root", root, "--device", key, "pam", "register", "--user", "root"), 4, "line 2")
    assert snapshot(root) == snap
    # an authfile that cannot be read as a file
    _assert_refused(
        cli("--root", root, "--device", key, "pam", "register", "--user", "root", "--authfile", "/etc"),
        2,
        "not a regular file",
    )
    # no hostname and no --origin
    (root / "etc/hostname").unlink()
    snap = snapshot(root)
    _assert_refused(cli("--root", root, "--device", key, "pam", "register", "--user", "root"), 2, "--origin")
    assert snapshot(root) == snap
    (root / "etc/hostname").write_text("ws1\n")
    # eddsa on Debian 12's pam-u2f 1.1.0
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        "Package: libpam-u2f\nStatus: install ok installed\nVersion: 1.1.0-1.1+deb12u1\n\n"
    )
    snap = snapshot(root)
    _assert_refused(
        cli("--root", root, "--device", key, "pam", "register", "--user", "root", "--algorithm", "eddsa"), 4, "1.1.0"
    )
    assert snapshot(root) == snap


def test_bad_age_inputs_change_nothing(sim_key: SimKey, cli: CliCall, root: Path, tmp_path: Path) -> None:
    make_root(root)
    key = sim_key("a")
    keys = tmp_path / "k"
    keys.mkdir()
    for name, kind in (("host", "ed25519"), ("other", "ed25519"), ("rsa", "rsa")):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(keys / name)], check=True)
    age_file = tmp_path / "yubikey-auth.age"
    host_pub = (keys / "host.pub").read_text().strip()
    ok = cli(
        "--root", root, "--device", key, "pam", "register", "--user", "root", "--age", host_pub, "--age-file", age_file
    )
    assert ok.exit_code == 0, ok.output
    sealed = age_file.read_bytes()
    key2 = sim_key("b")
    base = ["--root", root, "--device", key2, "pam", "register", "--user", "root", "--age-file", age_file]
    _assert_refused(cli(*base, "--age", host_pub, "--age-identity", keys / "other"), 2, "not one of its recipients")
    _assert_refused(cli(*base, "--age", host_pub), 2, "--age-identity")
    _assert_refused(cli(*base, "--age", (keys / "rsa.pub").read_text(), "--age-identity", keys / "host"), 2, "ssh-rsa")
    _assert_refused(cli(*base, "--age", "hello-world", "--age-identity", keys / "host"), 2, "not supported")
    assert age_file.read_bytes() == sealed
    assert not (root / "etc/u2f_mappings").exists()


# ------------------------------------------------------------------------- Nix output
def test_printed_nix_parses(sim_key: SimKey, cli: CliCall, root: Path, tmp_path: Path) -> None:
    make_root(root)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "h")], check=True)
    # the host key lives under the root, as on a real target
    (root / "etc/ssh").mkdir()
    (root / "etc/ssh/ssh_host_ed25519_key.pub").write_text((tmp_path / "h.pub").read_text())
    res = cli(
        "--root",
        root,
        "--json",
        "--device",
        sim_key("a"),
        "pam",
        "register",
        "--user",
        "root",
        "--age-host-key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "--age",
        "age1agyjw4et56xkzcfq5jx8wwx77mq9h3lnqtgez9zensrnshncayyq5wlf0z",
        "--age-file",
        tmp_path / "yubikey-auth.age",
        "--service",
        "sudo",
        "--service",
        "hyprlock",
    )
    assert res.exit_code == 0, res.output
    snippets = json.loads(res.stdout)["nix"]
    assert snippets["secrets.nix"].startswith('"yubikey-auth.age".publicKeys = [ "')
    assert '"ssh-ed25519 AAAA' in snippets["secrets.nix"] and '"age1agyjw4et56' in snippets["secrets.nix"]
    cfg = snippets["configuration.nix"]
    assert 'origin = "pam://ws1";' in cfg and "security.pam.services.hyprlock.u2fAuth = true;" in cfg
    nix_parse = ["nix-instantiate", "--parse", "-E"]
    subprocess.run([*nix_parse, "{ " + snippets["secrets.nix"] + " }"], check=True, capture_output=True)
    subprocess.run([*nix_parse, cfg], check=True, capture_output=True)
    # text mode prints the same snippets; they parse too
    res2 = cli(
        "--root",
        root,
        "--device",
        sim_key("b"),
        "pam",
        "register",
        "--user",
        "root",
        "--age-host-key",
        "/etc/ssh/ssh_host_ed25519_key.pub",
        "--age-file",
        tmp_path / "yubikey-auth.age",
        "--age-identity",
        tmp_path / "h",
    )
    assert res2.exit_code == 0, res2.output
    blocks = res2.stdout.split("\n--- ")[1:]
    assert len(blocks) == 2
    entry, module = (b.split("\n", 1)[1].split("\n\n")[0] for b in blocks)
    subprocess.run([*nix_parse, "{ " + entry + " }"], check=True, capture_output=True)
    subprocess.run([*nix_parse, module], check=True, capture_output=True)


# ------------------------------------------------------------------------- kill -9
def test_kill_9_leaves_old_or_new(tmp_path: Path, sim_key: SimKey, root: Path) -> None:
    make_root(root)
    path = root / "etc/u2f_mappings"
    path.write_text(legacy_line("bob") + "\n")
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    seen_new = False
    for i, delay in enumerate((0.05, 0.15, 0.25, 0.35, 0.45, 0.6, 0.8, 1.2)):
        old = path.read_bytes()
        spec = sim_key(f"k{i}")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "yktool",
                "--root",
                str(root),
                "--device",
                spec,
                "pam",
                "register",
                "--user",
                "root",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = path.read_bytes()
        if now != old:  # then it is the old file plus exactly one whole credential for root
            seen_new = True
            before, after = Authfile.parse(old.decode()), Authfile.parse(now.decode())
            assert not after.malformed, now
            assert after.credentials_of("bob") == before.credentials_of("bob")
            assert len(after.credentials_of("root")) == len(before.credentials_of("root")) + 1, now
    # whatever the kills hit, a run to the end still works on the result
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "yktool",
            "--root",
            str(root),
            "--device",
            sim_key("last"),
            "pam",
            "register",
            "--user",
            "root",
        ],
        env=env,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert not Authfile.parse(path.read_text()).malformed
    print("kill -9 runs that had already written:", seen_new)


# The child writes the new authfile's temporary file half-way, says so, and waits to be killed:
# the kill lands mid-write every time, not by luck of timing.
_HALF_WRITE = """
import os, sys, time
real = os.write
def write(fd, data):
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = ""
    if os.path.dirname(name) == sys.argv[2] and "u2f_mappings" in os.path.basename(name):
        real(fd, bytes(data)[: len(data) // 2])
        open(sys.argv[1], "w").close()
        time.sleep(120)
    return real(fd, data)
os.write = write
from yktool.cli import main
main(sys.argv[3:])
"""


def test_kill_9_in_the_middle_of_the_write_leaves_the_old_authfile(tmp_path: Path, sim_key: SimKey, root: Path) -> None:
    make_root(root)
    path = root / "etc/u2f_mappings"
    path.write_text(legacy_line("bob") + "\n")
    old = path.read_bytes()
    marker = tmp_path / "half-written"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HALF_WRITE,
            str(marker),
            str(path.parent),
            "--root",
            str(root),
            "--device",
            sim_key("a"),
            "pam",
            "register",
            "--user",
            "root",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.stderr.read() if proc.poll() is not None and proc.stderr else "no write"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == old
    # the next run completes on top of the intact old file
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "yktool",
            "--root",
            str(root),
            "--device",
            sim_key("a"),
            "pam",
            "register",
            "--user",
            "root",
        ],
        env=env,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    after = Authfile.parse(path.read_text())
    assert after.credentials_of("bob") == Authfile.parse(old.decode()).credentials_of("bob")
    assert len(after.credentials_of("root")) == 1 and not after.malformed


# ------------------------------------------------------------------------- pam check
def _pam(root: Path, name: str, text: str) -> None:
    d = root / "etc/pam.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)


def test_check_reports_traps(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    assert cli("--root", root, "--device", sim_key("a"), "pam", "register", "--user", "root").exit_code == 0
    (root / "etc/u2f_mappings").chmod(0o600)
    _pam(root, "sudo", "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue origin=pam://ws1\n")
    _pam(root, "hyprlock", "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue origin=pam://ws1\n")
    _pam(root, "login", "auth required pam_u2f.so nouserok cue\n")
    _pam(root, "greetd", "auth required pam_u2f.so authfile=/etc/missing cue origin=pam://ws1\n")
    (root / "home/.ecryptfs/alice").mkdir(parents=True)
    (root / "home/alice/.config/Yubico").mkdir(parents=True)
    (root / "home/alice/.config/Yubico/u2f_keys").write_text(
        (root / "etc/u2f_mappings").read_text().replace("root:", "alice:")
    )
    res = cli("--root", root, "--json", "pam", "check")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["ok"] is False
    codes = {(f["code"], tuple(f["services"])) for f in data["findings"]}
    names = {c for c, _ in codes}
    assert ("authfile-unreadable", ("hyprlock",)) in codes
    assert ("nouserok", ("login",)) in codes
    assert ("origin-hostname", ("login",)) in codes
    assert ("authfile-missing", ("greetd",)) in codes
    assert "encrypted-home" in names and "single-key" in names
    sudo = next(s for s in data["services"] if s["service"] == "sudo")
    assert sudo["u2f"][0]["authfile"] == "/etc/u2f_mappings" and sudo["u2f"][0]["cue"] is True
    # text mode names the same things and exits 1
    text = cli("--root", root, "pam", "check")
    assert text.exit_code == 1 and "nouserok" in text.stdout


def test_check_clean_config_passes(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    for name in ("a", "b"):
        assert cli("--root", root, "--device", sim_key(name), "pam", "register", "--user", "root").exit_code == 0
    _pam(root, "sudo", "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue origin=pam://ws1\n")
    _pam(root, "hyprlock", "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue origin=pam://ws1\n")
    res = cli("--root", root, "--json", "pam", "check")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] and data["authfiles"][0]["users"] == {"root": 2}
    # and an origin that differs from the registered keys' is an error
    _pam(root, "sudo", "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue origin=pam://other\n")
    res = cli("--root", root, "--json", "pam", "check")
    assert res.exit_code == 1 and "origin-mismatch" in res.stdout


@pytest.mark.parametrize("version,expect", [("1.1.0-1.1+deb12u1", (1, 1, 0)), (None, None)])
def test_installed_version(root: Path, version: str | None, expect: object) -> None:
    if version:
        (root / "var/lib/dpkg").mkdir(parents=True)
        (root / "var/lib/dpkg/status").write_text(
            f"Package: other\nVersion: 9.9.9\n\nPackage: libpam-u2f\nStatus: install ok installed\nVersion: {version}\n"
        )
    assert installed_version(Host(root))[0] == expect
    assert installed_version(Host(root), ["/nix/store/x-pam_u2f-1.3.2/lib/security/pam_u2f.so"])[0] == (1, 3, 2)


def test_nixos_plain_etc_target_refused(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    (root / "etc/NIXOS").write_text("")
    snap = snapshot(root)
    _assert_refused(
        cli("--root", root, "--device", sim_key("a"), "pam", "register", "--user", "root"), 4, "NixOS", "--age-host-key"
    )
    assert snapshot(root) == snap


def test_dry_run_touches_nothing(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    spec = sim_key("a")
    key_state = Path(spec.removeprefix("sim:")).read_bytes()
    snap = snapshot(root)
    res = cli("--root", root, "--dry-run", "--json", "--device", spec, "pam", "register", "--user", "root", "--pin")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["origin"] == ORIGIN and data["options"] == "+presence+pin"
    assert snapshot(root) == snap
    assert Path(spec.removeprefix("sim:")).read_bytes() == key_state


def test_age_refuses_to_drop_a_host_recipient(sim_key: SimKey, cli: CliCall, root: Path, tmp_path: Path) -> None:
    make_root(root)
    for name in ("h1", "h2"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    pub1, pub2 = ((tmp_path / f"{n}.pub").read_text() for n in ("h1", "h2"))
    age_file = tmp_path / "yubikey-auth.age"
    ok = cli(
        "--root",
        root,
        "--device",
        sim_key("a"),
        "pam",
        "register",
        "--user",
        "root",
        "--age",
        pub1,
        "--age",
        pub2,
        "--age-file",
        age_file,
    )
    assert ok.exit_code == 0, ok.output
    sealed = age_file.read_bytes()
    res = cli(
        "--root",
        root,
        "--device",
        sim_key("b"),
        "pam",
        "register",
        "--user",
        "root",
        "--age",
        pub1,
        "--age-file",
        age_file,
        "--age-identity",
        tmp_path / "h1",
    )
    _assert_refused(res, 4, "would no longer")
    assert age_file.read_bytes() == sealed
    # with both recipients it goes through, and both hosts can read the result
    res = cli(
        "--root",
        root,
        "--device",
        sim_key("b"),
        "pam",
        "register",
        "--user",
        "root",
        "--age",
        pub1,
        "--age",
        pub2,
        "--age-file",
        age_file,
        "--age-identity",
        tmp_path / "h1",
    )
    assert res.exit_code == 0, res.output
    for n in ("h1", "h2"):
        out = subprocess.run(
            ["age", "-d", "-i", str(tmp_path / n), str(age_file)], check=True, capture_output=True
        ).stdout
        assert len(Authfile.parse(out.decode()).credentials_of("root")) == 2


@pytest.mark.parametrize(
    "marker,expect",
    [
        ("home/.ecryptfs/alice/.Private", "ecryptfs"),
        ("home/alice/.Private", "ecryptfs"),
        ("var/lib/systemd/home/alice.identity", "systemd-homed"),
        ("home/alice.homedir/x", "systemd-homed"),
        ("home/.fscrypt/policies/abc", "fscrypt"),
        (None, None),
    ],
)
def test_home_encryption_detection(root: Path, marker: str | None, expect: str | None) -> None:
    make_root(root)
    (root / "home/alice").mkdir(parents=True)
    if marker:
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).write_text("")
    users = read_users(Host(root))
    found = home_encryption(Host(root), users["alice"])
    assert (found or "").startswith(expect or "") and (found is None) == (expect is None)


def test_non_utf8_bytes_survive_a_merge(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    raw = b"m\xfcller:AAAA\xff,BBBB\n" + legacy_line("bob").encode() + b"\n"
    path = root / "etc/u2f_mappings"
    path.write_bytes(raw)
    res = cli("--root", root, "--device", sim_key("a"), "pam", "register", "--user", "root")
    assert res.exit_code == 0, res.output
    after = path.read_bytes()
    assert after.startswith(raw) and after[len(raw) :].startswith(b"root:")


def test_check_reports_a_shared_rule_once(root: Path, cli: CliCall) -> None:
    make_root(root)
    _pam(root, "common-auth", "auth sufficient pam_u2f.so authfile=/etc/u2f_mappings nouserok cue\n")
    _pam(root, "sudo", "@include common-auth\n")
    _pam(root, "login", "auth include common-auth\n")
    res = cli("--root", root, "--json", "pam", "check", "--service", "sudo", "--service", "login")
    assert res.exit_code == 1  # the authfile is missing
    data = json.loads(res.stdout)
    nouserok = [f for f in data["findings"] if f["code"] == "nouserok"]
    assert len(nouserok) == 1 and nouserok[0]["services"] == ["login", "sudo"]
    assert "/etc/pam.d/common-auth:1" in nouserok[0]["message"]
    missing = [f for f in data["findings"] if f["code"] == "authfile-missing"]
    assert len(missing) == 1 and missing[0]["severity"] == "error"


def test_check_nixos_offline_root_with_age_file(sim_key: SimKey, cli: CliCall, root: Path, tmp_path: Path) -> None:
    make_root(root)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "h")], check=True)
    age_file = tmp_path / "yubikey-auth.age"
    assert (
        cli(
            "--root",
            root,
            "--device",
            sim_key("a"),
            "pam",
            "register",
            "--user",
            "root",
            "--age",
            (tmp_path / "h.pub").read_text(),
            "--age-file",
            age_file,
        ).exit_code
        == 0
    )
    module = "/nix/store/0abc-pam_u2f-1.3.0/lib/security/pam_u2f.so"
    _pam(root, "sudo", f"auth sufficient {module} authfile=/run/agenix/yubikey-auth cue origin=pam://ws1\n")
    res = cli("--root", root, "--json", "pam", "check", "--age-file", age_file, "--age-identity", tmp_path / "h")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["pam_u2f_version"] == "1.3.0"
    codes = {f["code"]: f for f in data["findings"]}
    assert codes["authfile-agenix"]["severity"] == "info"
    assert codes["single-key"]["services"] == ["sudo"]
    assert {"path": str(age_file), "users": {"root": 1}}.items() <= {
        k: v for k, v in data["authfiles"][-1].items() if k in ("path", "users")
    }.items()
    # a wrong identity is a clear error
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "o")], check=True)
    _assert_refused(
        cli("--root", root, "pam", "check", "--age-file", age_file, "--age-identity", tmp_path / "o"),
        2,
        "not one of its recipients",
    )


def test_check_per_user_file_hidden_by_locked_ecryptfs_home(root: Path, cli: CliCall) -> None:
    """A logged-out ecryptfs home hides ~/.config: the file looks missing, the cause is named."""
    make_root(root)
    (root / "home/.ecryptfs/alice").mkdir(parents=True)
    (root / "home/alice").mkdir(parents=True)
    _pam(root, "login", "auth required pam_u2f.so cue origin=pam://ws1\n")
    res = cli("--root", root, "--json", "pam", "check", "--service", "login")
    assert res.exit_code == 1
    codes = [f["code"] for f in json.loads(res.stdout)["findings"]]
    assert "encrypted-home" in codes and "authfile-missing" in codes


def test_registry_names_each_physical_key_once(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    a, b = sim_key("a"), sim_key("b")
    for spec, user in ((a, "alice"), (b, "alice"), (a, "root")):
        assert cli("--root", root, "--device", spec, "pam", "register", "--user", user).exit_code == 0
    reg = Registry.load(Host(root))
    names = {k.nickname: sorted(str(e["user"]) for e in k.enrollments) for k in reg.keys}
    assert names == {"primary": ["alice", "root"], "backup-1": ["alice"]}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_unreadable_authfile_is_a_clear_error_and_nothing_changes(sim_key: SimKey) -> None:
    """Run as nobody against a root-only authfile: a one-line error with a hint, no traceback,
    the authfile and the key untouched."""
    top = Path(tempfile.mkdtemp(prefix="yktool-unreadable-"))
    try:
        os.chmod(top, 0o755)  # noqa: S103 - nobody must reach the root inside
        (top / "root").mkdir()
        root = make_root(top / "root")
        for d in (root, root / "etc"):
            os.chmod(d, 0o755)  # noqa: S103
        authfile = root / "etc/u2f_mappings"
        authfile.write_text(legacy_line("bob") + "\n")
        os.chmod(authfile, 0o600)
        spec = sim_key("nobody-key")
        state = Path(spec.removeprefix("sim:"))
        keydir = top / "key"
        keydir.mkdir()
        shutil.copy2(state, keydir / "key.json")
        os.chown(keydir, 65534, 65534)
        os.chown(keydir / "key.json", 65534, 65534)
        before = snapshot(root), (keydir / "key.json").read_bytes()
        proc = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "yktool",
                "--root",
                str(root),
                "--device",
                f"sim:{keydir / 'key.json'}",
                "pam",
                "register",
                "--user",
                "alice",
                "--authfile",
                "/etc/u2f_mappings",
            ],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 11, proc.stderr  # permission denied
        assert "Traceback" not in proc.stderr
        assert "permission denied" in proc.stderr and "hint:" in proc.stderr
        assert (snapshot(root), (keydir / "key.json").read_bytes()) == before
    finally:
        shutil.rmtree(top)


def test_check_expand_reads_one_authfile_per_user(sim_key: SimKey, cli: CliCall, root: Path) -> None:
    make_root(root)
    for name in ("a", "b"):
        assert (
            cli(
                "--root",
                root,
                "--device",
                sim_key(name),
                "pam",
                "register",
                "--user",
                "root",
                "--authfile",
                "/etc/u2f/root",
            ).exit_code
            == 0
        )
    _pam(root, "sudo", "auth required pam_u2f.so authfile=/etc/u2f/%u expand cue origin=pam://ws1\n")
    res = cli("--root", root, "--json", "pam", "check", "--service", "sudo")
    data = json.loads(res.stdout)
    assert {a["path"]: a["users"] for a in data["authfiles"]}["/etc/u2f/root"] == {"root": 2}
    assert not [f for f in data["findings"] if "%u" in f["message"]], data["findings"]
