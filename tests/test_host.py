"""Host: paths stay under the root, writes are atomic with the mode set first, secrets go by pipe."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest

from tests.conftest import ChildRecorder
from yktool.errors import ToolFailed, UsageError
from yktool.host import Host, SecretPath


def test_paths_resolve_under_the_root(root: Path) -> None:
    host = Host(root)
    assert host.path("/etc/pam.d/sudo") == root / "etc/pam.d/sudo"
    assert host.path("etc/../etc/x") == root / "etc/x"


def test_dotdot_above_the_root_is_refused(root: Path) -> None:
    with pytest.raises(UsageError, match="climbs out of the root"):
        Host(root).path("/../../etc/shadow")


def test_absolute_symlink_is_taken_inside_the_root(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "real").mkdir()
    (root / "etc/link").symlink_to("/real")
    assert Host(root).path("/etc/link/file") == root / "real/file"


def test_relative_symlink_climbing_out_is_refused(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/evil").symlink_to("../../../../../tmp")
    with pytest.raises(UsageError, match="climbs out"):
        Host(root).path("/etc/evil/x")


def test_write_sets_mode_and_backs_up(root: Path) -> None:
    host = Host(root)
    host.write_file("/etc/u2f_mappings", b"old\n", 0o600)
    assert host.mode("/etc/u2f_mappings") == 0o600
    host.write_file("/etc/u2f_mappings", "new\n", 0o644)
    assert (root / "etc/u2f_mappings").read_bytes() == b"new\n"
    assert host.mode("/etc/u2f_mappings") == 0o644
    backups = list((root / "var/backups/yktool/etc").iterdir())
    assert [b.read_bytes() for b in backups] == [b"old\n"]
    # the copy of a 0600 file is 0600, in a tree only root enters
    assert [host.mode("/var/backups/yktool/etc/" + b.name) for b in backups] == [0o600]
    assert host.mode("/var/backups/yktool") == 0o700
    assert not [p for p in (root / "etc").iterdir() if "yktool-tmp" in p.name]


def test_kill_mid_write_leaves_old_or_new(root: Path) -> None:
    """A writer killed with SIGKILL at any moment leaves the old or the new file, never a mix."""
    old, new = b"A" * 200_000, b"B" * 200_000  # the child writes `new`
    Host(root).write_file("/f", old)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from yktool.host import Host
        h = Host(Path({str(root)!r}))
        while True:
            h.write_file("/f", b"B" * 200_000, backup=False)
    """)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
        try:
            proc.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert (root / "f").read_bytes() in (old, new)


def test_secrets_reach_the_child_by_pipe_only(root: Path, child_recorder: ChildRecorder) -> None:
    host = Host(root)
    result = host.run(["cat", SecretPath(0), SecretPath(1, prefix="")], secrets=[b"hunter2", b"-pin"])
    assert result.stdout == b"hunter2-pin"
    child_recorder.assert_no_secret("hunter2")


def test_inherited_secret_variables_are_not_passed_on(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSWORD", "from-the-caller")
    out = Host(root).run(["env"]).text
    assert "from-the-caller" not in out


def test_failed_command_raises_with_its_stderr(root: Path) -> None:
    with pytest.raises(ToolFailed, match="ls failed .*No such file"):
        Host(root).run(["ls", "/nonexistent-yktool"])


def test_missing_tool_names_the_package(root: Path) -> None:
    with pytest.raises(ToolFailed) as err:
        Host(root).run(["yktool-no-such-tool"])
    assert "not installed" in err.value.message


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_write_without_permission_is_a_usage_error() -> None:
    """Not root on a root-owned tree: a clear error with a hint, not a traceback, nothing written."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="yktool-perm-"))
    try:
        _write_as_nobody(top)
    finally:
        shutil.rmtree(top)


def _write_as_nobody(top: Path) -> None:
    (top / "etc").mkdir(parents=True)
    os.chmod(top, 0o755)  # noqa: S103 - nobody must reach the tree
    (top / "etc/keep").write_text("old\n")
    code = textwrap.dedent(f"""
        from pathlib import Path
        from yktool.errors import UsageError
        from yktool.host import Host
        h = Host(Path({str(top)!r}))
        for act in (lambda: h.write_file("/etc/new", "x"), lambda: h.mkdir("/etc/d"),
                    lambda: h.remove("/etc/keep")):
            try:
                act()
            except UsageError as err:
                print(err.message, "|", err.hint)
    """)
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # (removing /etc/keep fails at its backup under /var/backups/yktool first)
    assert [ln.split(":")[0] for ln in lines] == ["/etc/new", "/etc/d", "/var/backups/yktool"]
    assert all("permission denied | run as root" in ln for ln in lines)
    assert sorted(p.name for p in (top / "etc").iterdir()) == ["keep"]
    assert (top / "etc/keep").read_text() == "old\n"


def test_the_child_recorder_sees_a_secret_in_a_shell_line_or_env(child_recorder: ChildRecorder) -> None:
    """The no-leak tests rely on the recorder: it must see a secret however a child is started."""
    subprocess.run("true hunter2-shell-line-5521", shell=True, check=True)  # noqa: S602
    with pytest.raises(AssertionError, match="leaked"):
        child_recorder.assert_no_secret("hunter2-shell-line-5521")
    child_recorder.children.clear()
    subprocess.run(["true"], env={"X": "hunter2-env-7734"}, check=True)
    with pytest.raises(AssertionError, match="leaked"):
        child_recorder.assert_no_secret("hunter2-env-7734")


def test_folder_swapped_for_a_link_after_resolution_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user swaps ~/.ssh for a link to /root/.ssh between yktool's look at it and its open:
    the folder is opened with O_NOFOLLOW, so the write is refused and nothing lands behind it."""
    import yktool.host as host_module
    from yktool.errors import Refused

    host = Host(root)
    (root / "root/.ssh").mkdir(parents=True)
    (root / "home/u/.ssh").mkdir(parents=True)
    real_open = host_module._open_folder

    def swap_then_open(name: str, folder: int, inside: PurePosixPath, flags: int = os.O_PATH) -> int:
        if name == ".ssh":  # looked at as a folder a moment ago; now the user swaps it
            os.rename(root / "home/u/.ssh", root / "home/u/old")
            (root / "home/u/.ssh").symlink_to("/root/.ssh")
        return real_open(name, folder, inside, flags)

    monkeypatch.setattr(host_module, "_open_folder", swap_then_open)
    with pytest.raises(Refused, match="became a link"):
        host.write_file("/home/u/.ssh/authorized_keys", b"ssh-ed25519 AAAA attacker\n", 0o600, backup=False)
    assert list((root / "root/.ssh").iterdir()) == []
