"""Bytes in, bytes out (issue 12, item 12): a file holding bytes that are not UTF-8 never crashes
a command. Readers keep such bytes and write them back byte for byte; printers show them as
`\\xNN`, also when stdout is strict UTF-8 (PYTHONIOENCODING=utf-8:strict, or click's test runner,
whose stdout is strict). Fuzzed through the real commands with hypothesis (bounded examples)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CliCall
from yktool import udev, usbguard
from yktool.errors import ExitCode

REPO = Path(__file__).parent.parent
CODES = {int(c) for c in ExitCode}
FLAGS = ["--vendor", "1050", "--product", "0407", "--name", "YubiKey OTP+FIDO+CCID", "--interface", "03:01:01"]
UDEV_FLAGS = ["--vendor", "1050", "--product", "0407", "--serial", "123456", "--name", "YubiKey"]
CREDENTIAL = (
    "alice:owBYIJ5ABqy2yBWRvlf6x1d7KX6x0Sx6L7vrQ4fZ6vDbjUTtAVggAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    ",WPxOaNg7a8mBdk1I9pLTvLxGdMuyuPjWq5AOGC8qWHSl9yyRKx8SshN0TMSJQ3sAT3eCsvnrsRs5bbgH8iYQNA==,es256,+presence"
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _pam_root(root: Path) -> Path:
    (root / "etc/pam.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("ws1\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    (root / "etc/pam.d/sudo").write_text("auth sufficient pam_u2f.so authfile=/etc/u2f_mappings cue origin=pam://ws1\n")
    return root


def _yktool(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """The real CLI in a child, its stdio as the environment makes it (strict UTF-8 below)."""
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "yktool", *map(str, args)],
        capture_output=True,
        env=full,
        cwd=REPO,
        check=False,
        timeout=120,
    )


STRICT = [
    {"PYTHONIOENCODING": "utf-8:strict"},
    {"PYTHONIOENCODING": "ascii:strict"},
    {"LC_ALL": "C", "PYTHONIOENCODING": ""},
]
STRICT_IDS = ["utf8-strict", "ascii-strict", "lc-all-c"]


# ------------------------------------------------------------------ readers keep the bytes
def test_usbguard_allow_keeps_a_non_utf8_rules_file_byte_for_byte(cli: CliCall, root: Path) -> None:
    path = root / usbguard.RULES_PATH.lstrip("/")
    path.parent.mkdir(parents=True)
    old = (
        b"# r\xe8gles de la machine \xff\n"
        b'allow id 046d:c539 serial "\xfe\x01" name "Recv\xe9r" with-interface 03:01:01\n'
    )
    path.write_bytes(old)
    path.chmod(0o600)
    res = cli("--root", root, "usbguard", "allow", *FLAGS)
    assert res.exit_code == 0, res.output
    new = path.read_bytes()
    assert new.startswith(old) and new[len(old) :].startswith(b"allow id 1050:0407 ")
    assert cli("--root", root, "usbguard", "allow", *FLAGS).exit_code == 0  # found again, unchanged
    assert path.read_bytes() == new


def test_udev_install_keeps_a_non_utf8_rules_file_byte_for_byte(cli: CliCall, root: Path) -> None:
    path = root / udev.RULE_PATH.lstrip("/")
    path.parent.mkdir(parents=True)
    head = b"# locks the screen \xe0 la yktool \xff\n"
    other = b'# yktool-key: aaa-other\nACTION=="remove", ENV{ID_SERIAL_SHORT}=="\xfe\xfd", RUN+="/bin/true"\n'
    path.write_bytes(head + b"\n" + other)
    res = cli("--root", root, "udev", "install", *UDEV_FLAGS)
    assert res.exit_code == 0, res.output
    new = path.read_bytes()
    assert new.startswith(head) and other in new and b"yktool-key: primary" in new
    listed = cli("--root", root, "--json", "verify", "--only", "hw.udev.lock_rule")
    assert listed.exit_code in CODES and "Traceback" not in listed.output


# ------------------------------------------------------------------ printers escape them
@pytest.mark.parametrize("env", STRICT, ids=STRICT_IDS)
def test_pam_check_prints_non_utf8_evidence_escaped_on_a_strict_stdout(tmp_path: Path, env: dict[str, str]) -> None:
    root = _pam_root(tmp_path / "root")
    (root / "etc/u2f_mappings").write_bytes(CREDENTIAL.encode() + b"\n\xffbob\xfe:not,a,credential\n")
    for fmt in ((), ("--json",)):
        proc = _yktool("--root", root, *fmt, "pam", "check", env=env)
        assert proc.returncode == 0, proc.stderr  # warnings only: bob's line is malformed
        assert b"Traceback" not in proc.stderr and b"UnicodeEncodeError" not in proc.stderr
        out = proc.stdout.decode("utf-8")  # strict: a raw non-UTF-8 byte would fail here
        if not fmt:
            assert "\\xffbob\\xfe" in out, out
    assert json.loads(out)["authfiles"][0]["users"] == {"alice": 1, "\\xffbob\\xfe": 0}


@pytest.mark.parametrize("env", STRICT, ids=STRICT_IDS)
def test_verify_prints_non_utf8_evidence_escaped_on_a_strict_stdout(tmp_path: Path, env: dict[str, str]) -> None:
    root = tmp_path / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/core_pattern").write_bytes(b"core.\xff\xfe\n")
    for fmt in ((), ("--json",)):
        proc = _yktool("--root", root, *fmt, "verify", "--only", "kernel.coredump", env=env)
        assert proc.returncode == 1, proc.stderr
        assert b"Traceback" not in proc.stderr and b"UnicodeEncodeError" not in proc.stderr
        out = proc.stdout.decode("utf-8")
        if not fmt:
            assert "core.\\xff\\xfe" in out, out
    check = json.loads(out)["checks"][0]
    assert any(e["value"] == "core.\\xff\\xfe" for e in check["evidence"]), check


# ------------------------------------------------------------------ fuzzed through the commands
def _lines() -> st.SearchStrategy[bytes]:
    """Authfile-ish lines: real pieces (a credential, `user:`, commas, colons) and any bytes."""
    piece = st.one_of(
        st.binary(max_size=24),
        st.sampled_from([b"alice:", b"root:", b",", b":", b"*", b"+pin", b"es256", CREDENTIAL.encode(), b"\r", b"#"]),
    )
    return st.lists(piece, max_size=8).map(b"".join)


authfiles = st.one_of(st.binary(max_size=400), st.lists(_lines(), max_size=6).map(b"\n".join))


@FUZZ
@given(data=authfiles, as_json=st.booleans())
def test_fuzzed_authfiles_never_crash_pam_check(cli: CliCall, data: bytes, as_json: bool) -> None:
    top = Path(tempfile.mkdtemp(prefix="yktool-fuzz-"))
    try:
        root = _pam_root(top)
        (root / "etc/u2f_mappings").write_bytes(data)
        res = cli("--root", root, *(["--json"] if as_json else []), "pam", "check")
        assert res.exit_code in (0, 1), res.output  # a verdict, not an error: the file was read
        if as_json:
            assert isinstance(json.loads(res.stdout)["findings"], list)
        assert (root / "etc/u2f_mappings").read_bytes() == data
    finally:
        shutil.rmtree(top)


rule_lines = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b'allow id 1050:0407 serial "" name "YubiKey OTP+FIDO+CCID"',
                b"allow id *:*",
                b"block",
                b"# comment",
                b"allow with-interface equals { 03:*:* }",
                b'"',
                b"{",
                b"\xff\xfe",
            ]
        ),
    ),
    max_size=6,
).map(b"\n".join)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), rule_lines))
def test_fuzzed_rules_conf_never_crashes_usbguard_allow(cli: CliCall, data: bytes) -> None:
    top = Path(tempfile.mkdtemp(prefix="yktool-fuzz-"))
    try:
        path = top / usbguard.RULES_PATH.lstrip("/")
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        res = cli("--root", top, "--json", "usbguard", "allow", *FLAGS)
        assert res.exit_code in CODES, res.output
        assert res.exit_code == 0, res.output  # any existing file is kept and appended to
        new = path.read_bytes()
        assert new.startswith(data)  # every byte that was there, as it was
        assert json.loads(res.stdout)["added"] is (new != data)
    finally:
        shutil.rmtree(top)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), rule_lines))
def test_fuzzed_udev_rules_never_crash_udev_install(cli: CliCall, data: bytes) -> None:
    top = Path(tempfile.mkdtemp(prefix="yktool-fuzz-"))
    try:
        path = top / udev.RULE_PATH.lstrip("/")
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        res = cli("--root", top, "--json", "udev", "install", *UDEV_FLAGS)
        assert res.exit_code == 0, res.output
        assert b"# yktool-key: primary" in path.read_bytes()
    finally:
        shutil.rmtree(top)
