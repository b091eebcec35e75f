"""The `yktool` command: global options, lazily loaded command groups, one error handler.

Each command group lives in its own module (`yktool/cli/<group>.py`) and is imported only when
it is called, so `yktool --help` starts fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from yktool.cli import context
from yktool.cli.context import AppContext, guard
from yktool.errors import ExitCode, Interrupted, PermissionDenied, UsageError, YktoolError

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
    "man": ("yktool.cli.manpage", "man", "Write the yktool(1) manual page, made from these commands."),
}

EXIT_CODES_HELP = """\b
Exit codes:
  0 ok                    6 wrong PIN (retries left)
  1 a check failed        7 PIN blocked until the key is re-inserted
  2 usage / bad input     8 PIN blocked for good (reset needed)
  3 no key / TPM / dev    9 touch refused or timed out
  4 refused for safety   10 interrupted
  5 external tool failed 11 permission denied (run as root)

\b
Examples:
  yktool --dry-run commission --user alice --luks-device /dev/nvme0n1p2
  yktool verify --json
  yktool --root /mnt luks status /dev/vda2
  yktool --device sim:/tmp/key.json key info

Global options may also come after the command (`yktool verify --json`). Shell completion:
eval "$(_YKTOOL_COMPLETE=bash_source yktool)" (zsh_source, fish_source). `yktool man` writes
the manual page.
"""


def _option_table(command: click.Command) -> dict[str, bool]:
    """Every option name of `command` -> whether it takes a value."""
    table: dict[str, bool] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            takes_value = not (param.is_flag or param.count)
            for name in (*param.opts, *param.secondary_opts):
                table[name] = takes_value
    return table


def _help_width() -> int:
    """The width click's help formatter would choose (the terminal's columns, at most 80, less 2),
    found without importing shutil (and with it bz2 and lzma) on every `yktool --help`."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return max(min(columns or 80, 80) - 2, 50)


def _is_short_cluster(token: str, flags: dict[str, bool]) -> bool:
    """`-vv`, `-yq`: several short global flags (none taking a value) in one token."""
    return (
        len(token) > 2 and token[0] == "-" and token[1] != "-" and all(flags.get(f"-{c}") is False for c in token[1:])
    )


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, whose global options may also come
    after the command, and whose errors all become one message, a hint and an exit code."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run; map every YktoolError (and click's own errors, a PermissionError) to one message."""
        # The click context is gone when an error arrives here: tell emit_error about --json and
        # --no-color from the args (in-process callers such as CliRunner pass them here, not in argv).
        given = list(args) if args is not None else sys.argv[1:]
        given = given[: given.index("--")] if "--" in given else given
        as_json = "--json" in given  # until the global options are parsed (a bad flag before them)
        color = False if "--no-color" in given or os.environ.get("NO_COLOR") else None
        context.last_run = None
        from yktool.cli.output import escape_streams

        escape_streams()  # a non-UTF-8 byte read from a file is printed as \xNN, never a crash
        try:
            return super().main(args, prog_name or "yktool", complete_var, standalone_mode=False, **extra)
        except YktoolError as err:
            report_error(err, as_json=as_json, color=color)
            sys.exit(int(err.exit_code))
        except PermissionError as exc:  # anywhere: a file or device this user may not open
            denied = PermissionDenied.from_os(exc)
            report_error(denied, as_json=as_json, color=color)
            sys.exit(int(denied.exit_code))
        except (KeyboardInterrupt, click.Abort):
            report_error(Interrupted("interrupted"), as_json=as_json, color=color)
            sys.exit(int(ExitCode.INTERRUPTED))
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:  # `yktool`, `yktool luks`: the help
            if as_json:
                report_error(UsageError("a command is needed", f"see `{exc.ctx.command_path} --help`"), as_json=True)
            else:
                exc.show()
            sys.exit(int(ExitCode.USAGE))
        except click.ClickException as exc:
            report_error(_from_click(exc), as_json=as_json, color=color)
            sys.exit(int(ExitCode.USAGE))

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        if parent is None:
            extra.setdefault("terminal_width", _help_width())
        return super().make_context(info_name, args, parent, **extra)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = self.lift_globals(ctx, args)
        return super().parse_args(ctx, args)

    def lift_globals(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Move global options found after the command to before it, where click wants them.

        An option the (sub)command has itself stays with it, as does everything after `--` and
        the value of every option (so `--comment --json` keeps its comment).
        """
        globals_ = _option_table(self)
        i = 0
        while i < len(args) and args[i].startswith("-") and args[i] not in ("-", "--"):
            name, has_value = args[i].split("=", 1)[0], "=" in args[i]
            i += 2 if globals_.get(name) and not has_value else 1
        head, rest = args[:i], args[i:]
        lifted: list[str] = []
        kept: list[str] = []
        command: click.Command | None = self
        j = 0
        while j < len(rest):
            arg = rest[j]
            j += 1
            if arg == "--":
                kept += [arg, *rest[j:]]
                break
            if not arg.startswith("-") or arg == "-":
                if isinstance(command, click.Group):  # the next (sub)command's name
                    command = command.get_command(ctx, arg)
                kept.append(arg)
                continue
            own = _option_table(command) if command is not None else {}
            name, has_value = arg.split("=", 1)[0], "=" in arg
            if name in own:
                target = kept
                takes_value = own[name]
            elif name in globals_ or _is_short_cluster(arg, globals_):
                target = lifted
                takes_value = globals_.get(name, False)
            else:
                kept.append(arg)
                continue
            target.append(arg)
            if takes_value and not has_value and j < len(rest):
                target.append(rest[j])
                j += 1
        return head + lifted + kept

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


def _from_click(exc: click.ClickException) -> UsageError:
    """click's own error (bad flag, missing argument) as a yktool UsageError with the way out."""
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        usage = ctx.get_usage().removeprefix("Usage: ")
        hint = f"usage: {usage}; see `{ctx.command_path} --help`"
    else:
        hint = "see `yktool --help`"
    return UsageError(exc.format_message(), hint)


def _not_yet(name: str) -> click.Command:
    @click.command(name, help="Not built yet in this version.")
    def missing() -> None:
        raise YktoolError(f"`yktool {name}` is not built yet in this version", "see docs/ for what exists")

    return missing


@click.group("yktool", cls=LazyGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=str),
    default="/",
    show_default=True,
    metavar="DIR",
    envvar="YKTOOL_ROOT",
    help="Work on the tree under DIR (an offline root, an image being built).",
)
@click.option("--dry-run", is_flag=True, help="Show the plan and stop; change nothing.")
@click.option(
    "--json", "json_output", is_flag=True, help='One JSON document on stdout: {"schema": 1, "ok": …} (docs/json.md).'
)
@click.option("--yes", "-y", is_flag=True, help="Answer yes to confirmations (non-interactive).")
@click.option(
    "--tpm",
    default="auto",
    show_default=True,
    envvar="YKTOOL_TPM",
    metavar="TCTI",
    help="TPM2 TCTI: auto (/dev/tpmrm0) or e.g. swtpm:host=127.0.0.1,port=2321.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    envvar="YKTOOL_DEVICE",
    metavar="SPEC",
    help="FIDO2 key: auto, hid:/dev/hidrawN (or /dev/hidrawN), a YubiKey serial, or sim:PATH (the software key).",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Say more, and show each command run (argv only, never a secret); -vv adds timings.",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Only results, warnings, errors and what to do now (insert a key, touch it): no progress or notes.",
)
@click.option("--no-color", is_flag=True, help="No colours (also when NO_COLOR is set).")
@click.option(
    "--lock-wait",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    envvar="YKTOOL_LOCK_WAIT",
    help="How long to wait for another yktool run that changes this root (default 30).",
)
@click.version_option(package_name="yktool")
@click.pass_context
def main_group(
    ctx: click.Context,
    root: str,
    dry_run: bool,
    json_output: bool,
    yes: bool,
    tpm: str,
    device: str,
    verbose: int,
    quiet: bool,
    no_color: bool,
    lock_wait: float | None,
) -> None:
    """yktool: enroll a FIDO2 key and the TPM2 into every layer of a hardened Linux host.

    Global options go before or after the command: `yktool --root DIR luks status IMG --json`.
    """
    if quiet and verbose:
        raise UsageError("-q and -v exclude each other", "pick one: -q for less, -v for more")
    if no_color or os.environ.get("NO_COLOR"):  # https://no-color.org: set and not empty
        ctx.color = False
        if not os.environ.get("NO_COLOR"):  # the prompts (prompt_toolkit) read only the variable
            os.environ["NO_COLOR"] = "1"
            ctx.call_on_close(lambda: os.environ.pop("NO_COLOR", None))
    ctx.obj = context.last_run = AppContext(
        root=root,
        dry_run=dry_run,
        json=json_output,
        yes=yes,
        tpm=tpm,
        device=device,
        verbose=verbose,
        quiet=quiet,
        lock_wait=lock_wait,
    )
    if verbose:
        from yktool.cli.context import watch_commands

        ctx.call_on_close(watch_commands(verbose))


def main(argv: list[str] | None = None) -> Any:
    """Console entry point."""
    return main_group.main(args=argv, prog_name="yktool")


def report_error(err: YktoolError, as_json: bool = False, color: bool | None = None) -> None:
    from yktool.cli.output import emit_error

    emit_error(err, as_json=as_json, color=color)
