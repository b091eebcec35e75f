"""Wizard questions: a flag answers first; then the terminal (questionary); with --yes or no
terminal, the default — or a clear error naming the flag to pass."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from yktool.errors import UsageError

Check = Callable[[str], "str | None"]


def _questionary_check(check: Check | None, default: str | None) -> Callable[[str], Any] | None:
    """questionary's `validate=`: True, or the text saying what is wrong (shown under the answer)."""
    if check is None:
        return None

    def validate(text: str) -> bool | str:
        problem = check(text or default or "")
        return True if problem is None else problem

    return validate


@dataclass
class Asker:
    interactive: bool

    @classmethod
    def for_terminal(cls, yes: bool) -> Asker:
        return cls(interactive=not yes and sys.stdin.isatty())

    def text(
        self, question: str, given: str | None, *, flag: str, default: str | None = None, check: Check | None = None
    ) -> str:
        """`check` runs as the answer is typed: the person cannot go on with a wrong one (a flag's
        value is checked later, with the rest of the answers)."""
        if given is not None:
            return given
        if self.interactive:
            import questionary

            answer = questionary.text(
                question, default=default or "", validate=_questionary_check(check, default)
            ).unsafe_ask()
            if answer:
                return str(answer)
        if default is not None:
            return default
        raise UsageError(f"{question} (no answer)", f"pass {flag}")

    def select(self, question: str, given: str | None, choices: Sequence[str], *, flag: str, default: str) -> str:
        if given is not None:
            if given not in choices:
                raise UsageError(f"{flag} {given}: not one of {', '.join(choices)}", f"pass {flag} {choices[0]}")
            return given
        if self.interactive:
            import questionary

            return str(questionary.select(question, choices=list(choices), default=default).unsafe_ask())
        return default

    def checkbox(self, question: str, given: Sequence[str] | None, choices: Sequence[str], *, flag: str) -> list[str]:
        if given:
            unknown = [c for c in given if c not in choices]
            if unknown:
                raise UsageError(f"{flag}: unknown step(s) {', '.join(unknown)}", f"choose from {', '.join(choices)}")
            return list(given)
        if self.interactive:
            import questionary

            picked = questionary.checkbox(
                question, choices=[questionary.Choice(c, checked=True) for c in choices]
            ).unsafe_ask()
            return [str(c) for c in picked]
        return list(choices)

    def pick(self, question: str, choices: Sequence[tuple[str, str]], *, flag: str, listing: str) -> list[str]:
        """Several of `choices` ((value, label) pairs), none checked: the person must say. Without
        a terminal there is no default to fall back on: an error naming the flag and the list."""
        if self.interactive and not choices:
            raise UsageError(f"{question} (there is nothing to choose from)", f"registered: {listing}")
        if self.interactive:
            import questionary

            picked = questionary.checkbox(
                question, choices=[questionary.Choice(label, value=value) for value, label in choices]
            ).unsafe_ask()
            if picked:
                return [str(c) for c in picked]
            raise UsageError(f"{question} (none chosen)", f"choose at least one, or pass {flag}")
        raise UsageError(
            f"{question} (cannot ask: no terminal, and {flag} was not given)",
            f"pass {flag} NAME (several allowed); registered: {listing}",
        )

    def confirm(self, question: str, *, yes: bool, default: bool = True) -> bool:
        if yes:
            return True
        if self.interactive:
            import questionary

            return bool(questionary.confirm(question, default=default).unsafe_ask())
        raise UsageError(f"{question} (cannot ask: no terminal)", "pass --yes to go ahead without asking")

    def pause(self, message: str, *, yes: bool) -> None:
        """Wait for the person (e.g. to swap keys); skipped with --yes."""
        if yes or not self.interactive:
            return
        import questionary

        questionary.press_any_key_to_continue(message).unsafe_ask()
