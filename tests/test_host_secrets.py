"""Host.run's in-memory secret files and systemd credentials (used for systemd-cryptenroll)."""

from __future__ import annotations

import os
import subprocess
import sys

from yktool.host import Host, SecretPath


def test_secret_files_are_rereadable_read_only_memfds() -> None:
    r = Host().run(
        ["sh", "-c", 'cat "$1"; cat "$1"; echo; stat -L -c %a "$1"; readlink "$1"', "sh", SecretPath(0)],
        secrets=[b"s3cret"],
        secret_files=True,
    )
    lines = r.text.splitlines()
    assert lines[0] == "s3cret" * 2  # a pipe would give it once: systemd seeks in key files
    assert lines[1] == "400"
    assert lines[2].startswith("/memfd:")  # in memory, never a path on a disk
    assert "s3cret" not in " ".join(r.argv)


def test_credentials_reach_the_child_only_through_links() -> None:
    host = Host()
    r = host.run(
        [
            "sh",
            "-c",
            'cat "$CREDENTIALS_DIRECTORY/cryptenroll.tpm2-pin"; echo; '
            'cat "$CREDENTIALS_DIRECTORY/cryptenroll.tpm2-pin"; echo; echo "$CREDENTIALS_DIRECTORY"; '
            'find "$CREDENTIALS_DIRECTORY" -type f | wc -l',
        ],
        credentials={"cryptenroll.tpm2-pin": b"2468"},
    )
    pin1, pin2, folder, regular_files = r.text.splitlines()
    assert pin1 == pin2 == "2468"
    assert regular_files.strip() == "0"  # links only: no secret bytes in the folder
    assert not os.path.exists(folder)  # removed afterwards
    assert "NEWPIN" not in os.environ


def test_cli_modules_do_not_import_heavy_libraries() -> None:
    code = (
        "import sys, yktool.cli, yktool.cli.luks, yktool.cli.tpm, yktool.cli.demo; "
        "print(sorted(m for m in ('tpm2_pytss', 'fido2', 'ykman', 'yktool.tpm', 'yktool.luks.unlock', "
        "'yktool.host', 'subprocess') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
