"""The `yktool` command: global options, lazily loaded command groups, one error handler.

Each command group lives in its own module (`yktool/cli/<group>.py`) and is imported only when
it is called, so `yktool --help` starts fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from yktool.cli.context import AppContext, guard
from yktool.errors import ExitCode, Interrupted, UsageError, YktoolError

# name -> (module, attribute, one-line help shown in `yktool --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "commission": ("yktool.cli.flows", "commission", "New-host wizard: enroll the keys everywhere, then prove it."),
    "replace": ("yktool.cli.flows", "replace", "A key was lost: revoke it everywhere and enroll its replacement."),
    "verify": ("yktool.cli.verify", "verify", "Check the new-host security checklist, with evidence and fixes."),
    "demo": ("yktool.cli.demo", "demo", "Run the whole commissioning on software keys, swtpm and a scratch image."),
    "key": ("yktool.cli.key", "key", "Find, inspect and PIN-manage FIDO2 keys (real or simulated)."),
    "keys": ("yktool.cli.keys", "keys", "The key registry: which key was enrolled into what."),
    "tpm": ("yktool.cli.tpm", "tpm", "TPM2 presence, PCR banks and values, Secure Boot state."),
    "luks": ("yktool.cli.luks", "luks", "LUKS2 status, TPM2/FIDO2/recovery enrollment, test-unlock, wipe."),
    "ssh": ("yktool.cli.ssh", "ssh", "FIDO2-backed ed25519-sk SSH keys and authorized_keys."),
    "git": ("yktool.cli.git", "git", "Git commit signing with an SSH security key."),
    "pam": ("yktool.cli.pam", "pam", "pam_u2f credentials and authfiles (plain or age-encrypted)."),
    "udev": ("yktool.cli.udev", "udev", "The lock-on-removal udev rule for a key."),
    "usbguard": ("yktool.cli.usbguard", "usbguard", "USBGuard allow rules for a key."),
    "nixos": ("yktool.cli.nixos", "nixos", "The NixOS module a flake imports, made from the key registry."),
}

EXIT_CODES_HELP = """\b
Exit codes:
  0 ok                  6 wrong PIN (retries left)
  1 a check failed      7 PIN blocked until the key is re-inserted
  2 usage / bad input   8 PIN blocked for good (reset needed)
  3 no key / TPM / dev  9 touch refused or timed out
  4 refused for safety 10 interrupted
  5 external tool failed
"""


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, and whose errors become exit codes."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run; map every YktoolError to one message, a hint and its exit code."""
        # The click context is gone when an error arrives here: tell emit_error about --json from
        # the args (in-process callers such as CliRunner pass them here, not in sys.argv).
        as_json = "--json" in (list(args) if args is not None else sys.argv[1:])
        try:
            return super().main(args, prog_name or "yktool", complete_var, standalone_mode=False, **extra)
        except YktoolError as err:
            report_error(err, as_json=as_json)
            sys.exit(int(err.exit_code))
        except (KeyboardInterrupt, click.Abort):
            report_error(Interrupted("interrupted"), as_json=as_json)
            sys.exit(int(ExitCode.INTERRUPTED))
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            if as_json:  # a script asked for JSON: a bad flag is an error object too
                report_error(UsageError(exc.format_message(), "see `yktool --help`"), as_json=True)
            else:
                exc.show()
            sys.exit(int(ExitCode.USAGE))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return guard(self.commands[cmd_name])
        if cmd_name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return _not_yet(cmd_name)
            raise
        command: click.Command = getattr(module, attr)
        return guard(command)  # the root's lock for every command not marked read-only

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _not_yet(name: str) -> click.Command:
    @click.command(name, help="Not built yet in this version.")
    def missing() -> None:
        raise YktoolError(f"`yktool {name}` is not built yet in this version", "see docs/ for what exists")

    return missing


@click.group(cls=LazyGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False, path_type=str), default="/", show_default=True,
              envvar="YKTOOL_ROOT", help="Work on the tree under DIR (an offline root, an image being built).")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop; change nothing.")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations (non-interactive).")
@click.option("--tpm", default="auto", show_default=True, envvar="YKTOOL_TPM",
              help="TPM2 TCTI: auto (/dev/tpmrm0) or e.g. swtpm:host=127.0.0.1,port=2321.")
@click.option("--device", default="auto", show_default=True, envvar="YKTOOL_DEVICE",
              help="FIDO2 key: auto, hid:/dev/hidrawN, or sim:PATH (the software key).")
@click.option("-v", "--verbose", count=True, help="Say more (repeat for the commands run).")
@click.option("--lock-wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS", envvar="YKTOOL_LOCK_WAIT",
              help="How long to wait for another yktool run that changes this root (default 30).")
@click.version_option(package_name="yktool")
@click.pass_context
def main_group(ctx: click.Context, root: str, dry_run: bool, json_output: bool, yes: bool,
               tpm: str, device: str, verbose: int, lock_wait: float | None) -> None:
    """yktool: enroll a FIDO2 key and the TPM2 into every layer of a hardened Linux host.

    Global options go before the command: `yktool --root DIR --json luks status IMG`.
    """
    ctx.obj = AppContext(root=root, dry_run=dry_run, json=json_output, yes=yes, tpm=tpm,
                         device=device, verbose=verbose, lock_wait=lock_wait)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point."""
    return main_group.main(args=argv, prog_name="yktool")


def report_error(err: YktoolError, as_json: bool = False) -> None:
    from yktool.cli.output import emit_error

    emit_error(err, as_json=as_json)
