"""Shared test fixtures. Area-specific ones live in tests/fixtures/ and load as plugins."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest_plugins = [
    "tests.fixtures.tpm",
    "tests.fixtures.luks",
    "tests.fixtures.fido",
    "tests.fixtures.roots",
    "tests.fixtures.differential",
]

# tests/vm runs only inside the VM that scripts/test-vm boots (a real kernel: /dev/uhid,
# dm-crypt, a kernel TPM). The plain run (`pytest tests`) does not collect it; naming it
# (`pytest tests/vm`) outside that VM is refused, never skipped into a green run.
VM_TIER = Path(__file__).resolve().parent / "vm"


def _names_vm_tier(config: pytest.Config) -> bool:
    base = config.invocation_params.dir
    for arg in config.args:
        path = (base / arg.split("::")[0]).resolve()
        if path == VM_TIER or VM_TIER in path.parents:
            return True
    return False


def in_vm_tier() -> bool:
    """Inside scripts/test-vm's guest: its marker, and a kernel booted by virtme-ng."""
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        return False
    return os.environ.get("YKTOOL_VM_TIER") == "1" and "virtme" in cmdline


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path == VM_TIER and not _names_vm_tier(config):
        return True
    return None


VM_ONLY = (
    "tests/vm runs only inside the VM that scripts/test-vm boots (it maps disks, loads "
    "kernel modules and drives the kernel TPM): run scripts/test-vm"
)


def pytest_configure(config: pytest.Config) -> None:
    if _names_vm_tier(config) and not in_vm_tier():
        raise pytest.UsageError(VM_ONLY)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not in_vm_tier() and any(VM_TIER in Path(item.path).parents for item in items):
        pytest.exit(VM_ONLY, returncode=pytest.ExitCode.USAGE_ERROR)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


CliCall = Callable[..., CliResult]


@pytest.fixture(autouse=True)
def _live_state_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands on the live root (`luks …` on an image file, no --root) keep their lock and
    journals in the test's tmp folder, never in the machine's own /var/lib/yktool."""
    monkeypatch.setenv("YKTOOL_STATE_DIR", str(tmp_path / "live-state"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty scratch root for `--root`."""
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def cli() -> CliCall:
    """Run yktool in-process: cli("--root", r, "luks", "status", img, input="...")."""
    from yktool.cli import main_group

    def call(*args: object, input: str | bytes | None = None, env: dict[str, str] | None = None) -> CliResult:
        runner = CliRunner()
        result = runner.invoke(main_group, [str(a) for a in args], input=input, env=env, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return call


@dataclass
class Spawned:
    argv: list[str]
    env: dict[str, str]


class ChildRecorder:
    """Every child process Python starts (subprocess, os.exec*, os.posix_spawn), with argv and env.

    Built on audit hooks, so it sees children started by libraries too, not just Host.run.
    """

    def __init__(self) -> None:
        self.children: list[Spawned] = []
        self.active = False

    def hook(self, event: str, args: tuple[object, ...]) -> None:
        if not self.active:
            return
        if event == "subprocess.Popen":
            _exe, argv, _cwd, env = args
            self.children.append(self._spawned(argv, env))
        elif event in ("os.exec", "os.posix_spawn"):
            self.children.append(self._spawned(args[1], args[2]))

    @staticmethod
    def _spawned(argv: object, env: object) -> Spawned:
        """The audit event's argv (a list, or one command line) and env (None: the parent's)."""
        if isinstance(argv, str | bytes) or not isinstance(argv, Iterable):
            argv = [argv]
        return Spawned([str(a) for a in argv], dict(env) if isinstance(env, Mapping) and env else dict(os.environ))

    def assert_no_secret(self, *secrets: str | bytes) -> None:
        for child in self.children:
            blob = "\0".join(child.argv) + "\0" + "\0".join(f"{k}={v}" for k, v in child.env.items())
            for secret in secrets:
                s = secret.decode() if isinstance(secret, bytes) else secret
                assert s not in blob, f"secret leaked to child {child.argv[0]}"


_RECORDER = ChildRecorder()
sys.addaudithook(_RECORDER.hook)


@pytest.fixture
def child_recorder() -> Iterator[ChildRecorder]:
    """Record every child process started during the test (see ChildRecorder)."""
    _RECORDER.children = []
    _RECORDER.active = True
    try:
        yield _RECORDER
    finally:
        _RECORDER.active = False


@pytest.fixture(scope="session")
def commissioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo commissioned once per test worker (two software keys, swtpm, a LUKS2 image, a
    scratch root): tests take a copy (`scratch`), never change this one."""
    from yktool.demo import Demo

    demo = tmp_path_factory.mktemp("commissioned") / "demo"
    ctx = Demo(demo).run()
    assert all(line.ok for line in ctx.lines), [line for line in ctx.lines if not line.ok]
    return demo


@pytest.fixture
def scratch(commissioned: Path, tmp_path: Path) -> Path:
    """A private copy of the commissioned demo, to change at will."""
    from tests.flows_support import copy_scratch

    return copy_scratch(commissioned, tmp_path / "demo")
