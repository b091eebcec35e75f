"""The habits people bring to a CLI: global options anywhere, one error style, -q/-v, NO_COLOR,
a --root that exists, --device by hidraw node or serial, examples in every --help, completion
and a man page."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.conftest import CliCall
from tests.fixtures.luks import LuksImage, make_image
from tests.fixtures.tpm import SoftTpm
from tests.test_cli_every_command import leaf_commands
from yktool.cli import main_group
from yktool.cli.context import AppContext
from yktool.fido.devices import hidraw_for_serial, resolve_spec

REPO = Path(__file__).resolve().parent.parent
YKTOOL = REPO / ".venv/bin/yktool"


def lift(*args: str) -> list[str]:
    return main_group.lift_globals(click.Context(main_group), list(args))


# ------------------------------------------------------------------- global options anywhere
def test_global_options_after_the_command(cli: CliCall, tmp_path: Path) -> None:
    make_image(tmp_path / "images")
    r = cli("luks", "status", "/images/disk.img", "--root", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["ok"] is True and doc["version"] == 2
    r = cli("verify", "--list", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["checks"]


def test_lifting_keeps_values_own_options_and_what_follows_dashdash() -> None:
    # a value that looks like a global flag stays the value; -vv is lifted; after -- nothing moves
    assert lift("ssh", "keygen", "--comment", "--json", "-vv", "--", "--root") == [
        "-vv",
        "ssh",
        "keygen",
        "--comment",
        "--json",
        "--",
        "--root",
    ]
    # global flags between group and command, with values in both spellings
    assert lift("--root", "/r", "luks", "--json", "status", "IMG", "--device=sim:/k", "--tpm", "auto") == [
        "--root",
        "/r",
        "--json",
        "--device=sim:/k",
        "--tpm",
        "auto",
        "luks",
        "status",
        "IMG",
    ]
    assert lift("--help") == ["--help"] and lift() == []
    assert lift("-yq", "key", "list", "-O", "resident") == ["-yq", "key", "list", "-O", "resident"]


def test_an_option_of_the_command_itself_wins_over_the_global_one(
    cli: CliCall, monkeypatch: pytest.MonkeyPatch
) -> None:
    @click.command("probe")
    @click.option("--device", default=None)
    @click.pass_obj
    def probe(obj: AppContext, device: str | None) -> None:
        click.echo(f"own={device} global={obj.device} json={obj.json}")

    monkeypatch.setitem(main_group.commands, "probe", probe)
    r = cli("probe", "--device", "mine", "--json")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "own=mine global=auto json=True"


# A command's own option of the same name as a global one wins after the command (above); so each
# such shadowing must be meant. `key emulate --device` names the software key to plug in (the
# global --device is its default).
SHADOWING = {("key", "emulate")}


def test_no_command_shadows_a_global_option_unless_meant() -> None:
    from yktool.cli import _option_table

    ctx = click.Context(main_group)
    globals_ = set(_option_table(main_group)) - {"--help", "-h", "--version"}
    shadowing = set()
    for path in leaf_commands():
        command: click.Command | None = main_group
        for name in path:
            assert isinstance(command, click.Group)
            command = command.get_command(ctx, name)
        assert command is not None
        if set(_option_table(command)) & globals_:
            shadowing.add(path)
    assert shadowing == SHADOWING, "an option named like a global one: add the command to SHADOWING if meant"


# ------------------------------------------------------------------------- one error style
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["luks", "status"], "yktool: error: Missing argument 'DEVICE'."),
        (["no-such-command"], "yktool: error: No such command 'no-such-command'."),
        (["luks", "status", "--bogus", "x"], "yktool: error: No such option '--bogus'."),
        (["luks", "wipe", "x", "--slot", "one"], "yktool: error: Invalid value for '--slot'"),
    ],
)
def test_click_errors_read_like_every_other_error(cli: CliCall, args: list[str], message: str) -> None:
    r = cli(*args)
    assert r.exit_code == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith(message), r.stderr
    assert lines[1].startswith("  hint: usage: yktool") and "--help`" in lines[1]
    assert not any(line.startswith(("Error:", "Usage:", "Try ")) for line in lines)


def test_no_command_shows_the_help(cli: CliCall) -> None:
    for args in ([], ["luks"]):
        r = cli(*args)
        assert r.exit_code == 2 and r.stderr.startswith("Usage: yktool") and "yktool: error" not in r.stderr
        assert "Commands:" in r.stderr
    r = cli("--json", "luks")
    assert json.loads(r.stdout)["message"] == "a command is needed"


def test_json_errors_have_the_envelope(cli: CliCall) -> None:
    r = cli("--json", "luks", "status")
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["ok"] is False and doc["exit_code"] == 2
    assert doc["error"] == "UsageError" and "Missing argument" in doc["message"]


# ------------------------------------------------------------------------------ -q and -v
def test_quiet_drops_notes_but_not_results(cli: CliCall) -> None:
    # no hidraw here: `key list` says so on stderr, a note -q drops
    assert "no FIDO2 key found" in cli("--device", "auto", "key", "list").stderr
    r = cli("-q", "--device", "auto", "key", "list")
    assert r.exit_code == 0 and r.stderr == ""
    r = cli("-q", "--device", "auto", "key", "list", "--json")
    assert json.loads(r.stdout)["keys"] == []
    r = cli("-q", "-v", "key", "list")
    assert r.exit_code == 2 and "-q and -v exclude each other" in r.stderr


def test_verbose_shows_each_command_and_vv_its_time(cli: CliCall, tmp_path: Path) -> None:
    img = make_image(tmp_path / "images").path
    plain = cli("luks", "status", img)
    assert plain.exit_code == 0 and "+ " not in plain.stderr
    r = cli("-v", "luks", "status", img)
    assert r.exit_code == 0, r.output
    shown = [ln for ln in r.stderr.splitlines() if ln.startswith("+ ")]
    assert shown and all(str(img) in ln for ln in shown)
    assert any(ln.startswith("+ cryptsetup ") for ln in shown) and " s, exit " not in r.stderr
    r = cli("-vv", "luks", "status", img)
    timings = [ln for ln in r.stderr.splitlines() if " s, exit 0" in ln]
    assert len(timings) == len(shown)
    from yktool import host

    assert host.command_watcher is None  # stopped with the command: nothing leaks into the next


def test_verbose_never_shows_a_secret(cli: CliCall, measured_tpm: SoftTpm, luks2_image: LuksImage) -> None:
    # the passphrase comes on stdin and goes to systemd-cryptenroll on an in-memory file
    secret = luks2_image.passphrase.decode()
    r = cli("-vv", "--tpm", measured_tpm.tcti, "luks", "enroll-tpm2", luks2_image.path, input=secret + "\n")
    assert r.exit_code == 0, r.output
    assert any(ln.startswith("+ systemd-cryptenroll ") for ln in r.stderr.splitlines())
    assert secret not in r.stderr and secret not in r.stdout


# ------------------------------------------------------------------------------- colours
def _styled(args: list[str], env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main_group, args, env=env, color=True)
    return result.output


def test_no_color_and_the_flag_drop_the_escapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    (tmp_path / "etc").mkdir()
    args = ["--root", str(tmp_path), "verify", "--only", "sysctl.kernel.kptr_restrict"]
    assert "\x1b[" in _styled(args) and "\x1b[" in _styled(["no-such-command"])
    for out in (
        _styled(args, {"NO_COLOR": "1"}),
        _styled(["--no-color", *args]),
        _styled(["no-such-command"], {"NO_COLOR": "1"}),
        _styled(["no-such-command", "--no-color"]),
    ):
        assert "\x1b[" not in out and ("WARN" in out or "yktool: error:" in out), out
    assert "NO_COLOR" not in os.environ  # --no-color hands it to the prompts for its run only


# --------------------------------------------------------------------------------- --root
def test_a_root_that_does_not_exist_is_refused(cli: CliCall, tmp_path: Path) -> None:
    r = cli("--root", tmp_path / "nope", "verify")
    assert r.exit_code == 2 and "--root" in r.stderr and "does not exist" in r.stderr and "hint:" in r.stderr
    assert r.stdout == ""  # nothing verified
    (tmp_path / "file").write_text("")
    r = cli("--root", tmp_path / "file", "keys", "list")
    assert r.exit_code == 2 and "yktool: error:" in r.stderr


# ------------------------------------------------------------------------------- --device
def test_device_by_hidraw_node_and_by_serial(cli: CliCall) -> None:
    assert resolve_spec("/dev/hidraw3") == "hid:/dev/hidraw3"
    present = [("/dev/hidraw5", 123), ("/dev/hidraw6", 456), ("/dev/hidraw7", None)]
    assert hidraw_for_serial(456, lambda: present) == "/dev/hidraw6"
    r = cli("--device", "/dev/hidraw99", "key", "info")
    assert r.exit_code == 3 and "no key at /dev/hidraw99" in r.stderr
    # yubikey-manager's real enumeration: no YubiKey on this machine, so no such serial
    r = cli("--device", "12345678", "key", "info")
    assert r.exit_code == 3 and "no YubiKey with serial 12345678" in r.stderr


# ------------------------------------------------------------------------ help, man, completion
def test_every_command_has_examples_in_its_help(cli: CliCall) -> None:
    paths = {p[:n] for p in leaf_commands() for n in range(1, len(p) + 1)}
    missing = []
    for path in sorted(paths):
        r = cli(*path, "--help")
        assert r.exit_code == 0, r.output
        block = re.split(r"\n  Examples[^\n]*:\n", r.stdout, maxsplit=1)[1:] or [""]
        if not block[0].strip() or " ".join(path) not in block[0]:
            missing.append(" ".join(path))
    assert not missing, f"no Examples section naming the command: {missing}"


def test_man_page_covers_every_command_and_renders_clean(tmp_path: Path) -> None:
    page = tmp_path / "man1/yktool.1"
    r = subprocess.run([str(YKTOOL), "man", "--output", str(page)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    for path in leaf_commands():
        if path != ("man",):
            assert f'.SS "yktool {" ".join(path)}'.replace("-", "\\-") in text, path
    # groff's own warnings (-ww) and man's pipeline: nothing to complain about
    groff = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    shown = subprocess.run(
        ["man", "-l", str(page)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": ""},
    )
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    assert "yktool luks enroll-tpm2 [OPTIONS] DEVICE" in shown.stdout and "EXIT STATUS" not in shown.stdout
    assert "11 permission denied" in shown.stdout


def test_bash_completion_completes_commands_and_options() -> None:
    script = (
        'eval "$(_YKTOOL_COMPLETE=bash_source yktool)"; '
        'COMP_WORDS=(yktool lu); COMP_CWORD=1; _yktool_completion yktool; echo "${COMPREPLY[@]}"; '
        'COMP_WORDS=(yktool luks status --); COMP_CWORD=3; _yktool_completion yktool; echo "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{YKTOOL.parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first.split() == ["luks"]
    assert "--help" in second.split()
