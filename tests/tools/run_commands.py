"""Run many yktool command lines in one process (stdin: a JSON list of argv lists) and print,
as JSON, each one's exit code, stdout, stderr and the traceback of any exception that escaped.

One interpreter for every command keeps tests that walk the whole command tree fast, e.g. the
one that runs every command as an unprivileged user (started once under `setpriv`).
"""

from __future__ import annotations

import json
import sys
import traceback

from click.testing import CliRunner

from yktool.cli import main_group


def main() -> int:
    runs = json.load(sys.stdin)
    out = []
    for argv in runs:
        result = CliRunner().invoke(main_group, argv, input="", catch_exceptions=True)
        escaped = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            escaped = "".join(traceback.format_exception(result.exception))
        out.append(
            {
                "argv": argv,
                "exit_code": result.exit_code,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "traceback": escaped,
            }
        )
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
