"""Every `yktool …` command line that yktool tells a person to run — verify's fixes, error hints,
the Examples of each --help, the docs — names commands and flags that exist: each is run with
--help."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
from click.testing import CliRunner

from yktool.cli import _option_table, main_group

REPO = Path(__file__).resolve().parent.parent
STOP = re.compile(r"[`|()\n;,\"']|  | or: | then |&&")
# prose such as "yktool enrolls a key" is not a command; a word in backticks right after yktool is
PLACEHOLDER = "X"


def _strings(tree: ast.AST) -> list[str]:
    """Every string constant in a module, f-strings with each {…} replaced by a placeholder."""
    out: list[str] = []
    parts: set[int] = set()  # the constant pieces of f-strings: read as part of their f-string
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts.update(id(v) for v in node.values)
            out.append(
                "".join(
                    v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else PLACEHOLDER
                    for v in node.values
                )
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            out.append(node.value)
    return out


def named_commands(text: str) -> list[tuple[list[str], bool]]:
    """The `yktool …` command lines in `text`: (tokens after yktool, whether in backticks)."""
    found = []
    for m in re.finditer(r"(?<![\w/.-])yktool ", text):
        quoted = m.start() > 0 and text[m.start() - 1] == "`"
        rest = text[m.end() :]
        stop = STOP.search(rest)
        tokens = []
        for token in (rest[: stop.start()] if stop else rest).split():
            if token in ("…", "...") or token.endswith(":"):  # the command ends, prose goes on
                break
            tokens.append(token.rstrip("."))
            if token.endswith("."):
                break
        found.append((tokens, quoted))
    return found


def check_command(tokens: list[str]) -> str | None:
    """None when the subcommands and flags of `tokens` exist, else what is wrong; "prose" when
    the first word is no command (nor an option). An option's missing value becomes a
    placeholder in `tokens`, so that `--help` after them is never taken for a value."""
    ctx = click.Context(main_group)
    globals_ = _option_table(main_group)
    command: click.Command = main_group
    i = 0
    at_leaf = False
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.startswith("-") and token != "-" and "/" in token.split("=", 1)[0]:  # --out/--flake: either
            tokens[i - 1 : i] = token.split("/")
            i -= 1
            continue
        if token.startswith("-") and token != "-":
            name = token.split("=", 1)[0]
            own = _option_table(command)
            table = own if name in own else globals_
            if name not in table and name not in ("-h", "--help"):
                return f"no option {name} on `{' '.join(['yktool', *tokens])}`"
            if table.get(name) and "=" not in token:
                if i >= len(tokens) or tokens[i].startswith("-"):
                    tokens.insert(i, PLACEHOLDER)
                i += 1
            continue
        if isinstance(command, click.Group) and not at_leaf:
            sub = command.get_command(ctx, token)
            if sub is None:
                return "prose" if command is main_group else f"no command {token!r}"
            command = sub
            at_leaf = not isinstance(sub, click.Group)
    return None


def _sources() -> list[tuple[str, str, bool]]:
    """(where, text, strict) of every fix in verify's registry, every string in the package, and
    every line of the docs (strict: a word in backticks after yktool must be a command; the docs
    also name things such as "`yktool software key`")."""
    from yktool.checks import all_checks

    out = [(f"fix of {c.id}", c.fix, True) for c in all_checks()]
    for path in sorted((REPO / "yktool").rglob("*.py")):
        out += [(str(path.relative_to(REPO)), s, True) for s in _strings(ast.parse(path.read_text()))]
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        out += [
            (f"{path.relative_to(REPO)}:{n}", line, False) for n, line in enumerate(path.read_text().splitlines(), 1)
        ]
    return out


def test_every_named_command_exists() -> None:
    problems = []
    runs = 0
    seen: set[tuple[str, ...]] = set()
    for where, text, strict in _sources():
        for tokens, quoted in named_commands(text):
            verdict = check_command(tokens)
            if verdict == "prose":
                if strict and quoted and tokens[:1] != [PLACEHOLDER]:  # `yktool {name}`: made at run time
                    problems.append(f"{where}: `yktool {' '.join(tokens)}`: no such command")
                continue
            if verdict is not None:
                problems.append(f"{where}: {verdict}")
                continue
            if tuple(tokens) in seen:
                continue
            seen.add(tuple(tokens))
            result = CliRunner().invoke(main_group, [*tokens, "--help"])
            runs += 1
            if result.exit_code != 0:
                problems.append(
                    f"{where}: `yktool {' '.join(tokens)} --help` exit {result.exit_code}: {result.output[-300:]}"
                )
    assert not problems, "\n".join(problems)
    assert runs > 40  # the fixes, the hints and every command's examples


def test_the_checker_catches_a_flag_that_does_not_exist() -> None:
    # verify's backup fix once said `yktool commission --backup`: the check must refuse that
    assert check_command(["commission", "--backup"]) == "no option --backup on `yktool commission --backup`"
    assert check_command(["luks", "enrol-tpm2", "X"]) == "no command 'enrol-tpm2'"
    assert check_command(["enrolls", "a", "key"]) == "prose"
    assert check_command(["--root", "X", "luks", "status", "X", "--json"]) is None
    ((tokens, quoted),) = named_commands("run `yktool luks enroll-tpm2 --replace` (unlock first)")
    assert tokens == ["luks", "enroll-tpm2", "--replace"] and quoted
