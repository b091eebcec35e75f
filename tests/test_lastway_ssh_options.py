"""The SSH part of the last-way-in check reads a kept key's options as sshd does (attack left open
in issue 12): a key restricted to `command="/bin/false"` (any forced command), an expired one,
a `cert-authority` line or one sshd skips for bad options is no way in, so revoking the user's
last real key is refused. `restrict`/`no-pty` still let any command run: they count.

The real consumer decides: Debian's sshd (scripts/fetch-sshd, never installed) in a private mount
namespace on 127.0.0.1, logged into with ssh and a throwaway key; the command the client asks for
must run.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.differential import report_cases
from tests.flows_support import tree_bytes
from tests.sshd_real import LIBS, ensure_sshd
from tests.test_replace_lost import AUTHORIZED, _only_ssh_key_is_primarys, _reset
from yktool.demo import ROOT

# options of a kept key line -> whether sshd runs the client's own command with that key
OPTIONS = {
    "": True,
    "restrict": True,
    "no-pty": True,
    "restrict,pty": True,
    "NO-PTY,no-agent-forwarding": True,
    'environment="A=b"': True,
    'expiry-time="29991231"': True,
    'from="127.0.0.1"': True,
    'from="10.9.9.9"': False,
    'command="/bin/false"': False,
    'restrict,command="/usr/bin/true"': False,
    'command="echo \\"hi\\""': False,
    'expiry-time="20200101"': False,
    'expiry-time="202001011200Z"': False,
    "cert-authority": False,
    "no-such-option": False,
    "restrict,,no-pty": True,
    'command="/bin/false': False,
    "restrictx": False,
    ",restrict": True,  # an empty option is no error to sshd
    "restrict,": True,
    "foo,restrict": False,
    "Restrict": True,  # names are matched without case
    "no-restrict": False,
    "no-verify-required": True,
    'expiry-time="2999"': False,
    'principals="alice"': False,
    'command="/bin/false",': False,
}
# options yktool counts as no way in although sshd let this connection in: refusing is the safe
# side (from= names hosts the person may not be at; yktool cannot tell where they connect from)
NOT_COUNTED = {'from="127.0.0.1"'}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, Path]]:
    """(root, port, client key): sshd -D on 127.0.0.1 with the root's /etc/ssh, passwd, group
    and /run bound over the machine's inside its own mount namespace; alice's keys in
    /etc/ssh/keys/alice."""
    sshd_bin = ensure_sshd()
    root = tmp_path_factory.mktemp("sshd")
    for d in ("etc/ssh/keys", "run/sshd", "home/alice"):
        (root / d).mkdir(parents=True)
    os.chown(root / "home/alice", 1000, 1000)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
        f"alice:x:1000:1000:Alice:{root}/home/alice:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\nalice:x:1000:\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "etc/ssh/ssh_host_ed25519_key")], check=True
    )
    client = root / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client)], check=True)
    port = _free_port()
    (root / "etc/ssh/sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
        "AuthorizedKeysFile /etc/ssh/keys/%u\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPidFile none\n"
    )
    script = (
        'mount --bind "$1/etc/ssh" /etc/ssh && mount --bind "$1/etc/passwd" /etc/passwd && '
        'mount --bind "$1/etc/group" /etc/group && mount --bind "$1/run" /run && '
        'exec "$2" -D -e -f /etc/ssh/sshd_config'
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script, "sh", str(root), str(sshd_bin)],
        env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(LIBS)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the test sshd did not start") from None
                time.sleep(0.1)
        yield root, port, client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sshd_runs_my_command(sshd: tuple[Path, int, Path], options: str) -> bool:
    """Log in as alice with the client key authorized under `options`: does the command the
    client asks for run (a fresh nonce, which no forced command can echo)?"""
    root, port, client = sshd
    line = client.with_suffix(".pub").read_text().strip()
    (root / "etc/ssh/keys/alice").write_text((f"{options} {line}" if options else line) + "\n")
    nonce = secrets.token_hex(8)
    r = subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(client),
            "-p",
            str(port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ConnectTimeout=10",
            "alice@127.0.0.1",
            f"echo way-in-{nonce}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return f"way-in-{nonce}" in r.stdout


def test_key_options_judged_as_sshd_does(sshd: tuple[Path, int, Path], request: pytest.FixtureRequest) -> None:
    """Each option set of the table: the real sshd's answer is the table's, and yktool's
    reading agrees with it (save NOT_COUNTED, where refusing is the safe side)."""
    from yktool.authorized_keys import not_a_way_in

    started = time.monotonic()
    line = sshd[2].with_suffix(".pub").read_text().strip()
    wrong = []
    for options, expected in sorted(OPTIONS.items()):
        real = sshd_runs_my_command(sshd, options)
        ours = not_a_way_in(f"{options} {line}" if options else line) is None
        if real is not expected or ours is not (real and options not in NOT_COUNTED):
            wrong.append((options, expected, real, ours))
    report_cases(
        request,
        "authorized_keys options vs sshd login",
        seconds=round(time.monotonic() - started, 1),
        cases=len(OPTIONS),
        logged_in=sum(OPTIONS.values()),
        disagree=len(wrong),
    )
    assert not wrong, f"(options, table, sshd, yktool): {wrong}"


# --------------------------------------------------------------------------- through yktool key reset
@pytest.mark.parametrize(
    "options", ['command="/bin/false"', 'restrict,command="/usr/bin/true"', 'expiry-time="20200101"', "cert-authority"]
)
def test_reset_refused_when_the_kept_ssh_key_is_no_way_in(scratch: Path, cli: CliCall, options: str) -> None:
    """alice's only key that logs her in is the primary's; the other one in her authorized_keys
    only runs /bin/false (or has expired, or is a CA): resetting the primary is refused."""
    _only_ssh_key_is_primarys(scratch)
    path = scratch / ROOT / AUTHORIZED
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(scratch / "other")], check=True)
    assert other.returncode == 0
    path.write_text(path.read_text() + f"{options} {(scratch / 'other.pub').read_text().strip()}\n")
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "without any SSH key" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


def test_reset_goes_ahead_when_the_kept_key_is_restricted_but_runs_commands(scratch: Path, cli: CliCall) -> None:
    _only_ssh_key_is_primarys(scratch)
    path = scratch / ROOT / AUTHORIZED
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(scratch / "other")], check=True)
    path.write_text(path.read_text() + f"restrict {(scratch / 'other.pub').read_text().strip()}\n")
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 0, r.output
