"""`yktool git …`: commit and tag signing with an SSH security key."""

from __future__ import annotations

from pathlib import PurePosixPath

import click

from yktool.cli.context import AppContext, pass_app
from yktool.cli.output import emit, info, printable
from yktool.errors import UsageError
from yktool.git_signing import check_email, configure_and_record
from yktool.ssh.accounts import default_user, lookup_user
from yktool.ssh.files import find_pubkey, load_key_pair


def _shown(text: str) -> str:
    """Text that echoes the user's config, emails or paths, safe for root's terminal: each
    line's control characters (ESC, CR, BEL …) as `\\xNN`, the lines kept."""
    return "\n".join(printable(line) for line in text.split("\n"))


@click.group("git")
def git() -> None:
    """Git commit and tag signing with a FIDO2-backed SSH key (gpg.format ssh).

    \b
    Examples:
      yktool git signing --email alice@example.org
    """


@git.command("signing")
@click.option("--email", required=True, help="The committer email; the allowed_signers principal.")
@click.option("--global", "global_", is_flag=True, help="Configure the user's ~/.gitconfig (the default).")
@click.option("--repo", default=None, help="Configure this repository (inside the root) instead.")
@click.option(
    "--key", "key", default=None, help="The key's .pub inside the root (default ~USER/.ssh/id_ed25519_sk.pub)."
)
@click.option("--user", "-u", default=None, help="Whose git (home from the root's /etc/passwd; default: you).")
@click.option(
    "--allowed-signers", default=None, help="allowed_signers file inside the root (default ~USER/.ssh/allowed_signers)."
)
@click.option(
    "--nickname",
    default=None,
    help="Name of the physical key in the registry (default: the key that made this SSH key).",
)
@pass_app
def signing(
    app: AppContext,
    email: str,
    global_: bool,
    repo: str | None,
    key: str | None,
    user: str | None,
    allowed_signers: str | None,
    nickname: str | None,
) -> None:
    """Configure git to sign commits and tags with the SSH key, and to verify them.

    Sets gpg.format=ssh, user.signingkey, commit.gpgsign, tag.gpgsign, gpg.ssh.allowedSignersFile
    (and user.email) with `git config --file`, and adds `EMAIL namespaces="git" KEY` to the
    allowed_signers file (sorted, no duplicates). Prints the resulting config.

    \b
    Examples:
      yktool git signing --email alice@example.org
      yktool git signing --email alice@example.org --repo /home/alice/src/project
      yktool --root /mnt git signing --email alice@example.org --user alice
    """
    if global_ and repo:
        raise UsageError("--global and --repo exclude each other", "pick one scope")
    check_email(email)
    host = app.host
    account = lookup_user(host, user or default_user())
    pub = find_pubkey(host, account, key)
    repo_path = PurePosixPath("/") / repo if repo else None
    signers = PurePosixPath("/") / allowed_signers if allowed_signers else None
    if app.dry_run:
        load_key_pair(host, pub if str(pub).endswith(".pub") else pub.with_name(pub.name + ".pub"))
        emit(
            app.json,
            {"ok": True, "dry_run": True, "email": email, "key": str(pub)},
            _shown(f"would configure git signing for {email} with {pub}"),
        )
        return
    setup = configure_and_record(
        host, account, email=email, pub=pub, repo=repo_path, allowed_signers=signers, nickname=nickname
    )
    for note in setup.notes:
        info(_shown(note))
    emit(
        app.json,
        {
            "ok": True,
            "config_file": str(setup.config_file),
            "allowed_signers": str(setup.allowed_signers),
            "config": setup.values,
            "changed": setup.changed,
            "fingerprint": setup.fingerprint,
            "notes": setup.notes,
        },
        _shown(
            f"git signing configured in {setup.config_file}:\n{setup.shown}\n"
            f"allowed_signers: {setup.allowed_signers}" + ("" if setup.allowed_signers_changed else " (unchanged)")
        ),
    )
