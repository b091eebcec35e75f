"""`yktool git …`: commit and tag signing with an SSH security key."""

from __future__ import annotations

from pathlib import PurePosixPath

import click

from yktool.cli.context import AppContext, pass_app
from yktool.cli.output import emit, info


@click.group("git")
def git() -> None:
    """Git commit and tag signing with a FIDO2-backed SSH key (gpg.format ssh)."""


@git.command("signing")
@click.option("--email", required=True, help="The committer email; the allowed_signers principal.")
@click.option("--global", "global_", is_flag=True, help="Configure the user's ~/.gitconfig (the default).")
@click.option("--repo", default=None, help="Configure this repository (inside the root) instead.")
@click.option("--key", "key", default=None,
              help="The key's .pub inside the root (default ~USER/.ssh/id_ed25519_sk.pub).")
@click.option("--user", "-u", default=None, help="Whose git (home from the root's /etc/passwd; default: you).")
@click.option("--allowed-signers", default=None,
              help="allowed_signers file inside the root (default ~USER/.ssh/allowed_signers).")
@click.option("--nickname", default=None,
              help="Name of the physical key in the registry (default: the key that made this SSH key).")
@pass_app
def signing(app: AppContext, email: str, global_: bool, repo: str | None, key: str | None, user: str | None,
            allowed_signers: str | None, nickname: str | None) -> None:
    """Configure git to sign commits and tags with the SSH key, and to verify them.

    Sets gpg.format=ssh, user.signingkey, commit.gpgsign, tag.gpgsign, gpg.ssh.allowedSignersFile
    (and user.email) with `git config --file`, and adds `EMAIL namespaces="git" KEY` to the
    allowed_signers file (sorted, no duplicates). Prints the resulting config.
    """
    from yktool.errors import UsageError
    from yktool.git_signing import check_email, configure
    from yktool.inventory import Registry
    from yktool.ssh.accounts import default_user, lookup_user
    from yktool.ssh.enroll import credential_id_b64, default_key_path, load_private, nickname_of_credential, pub_path
    from yktool.ssh.keys import ECDSA_SK, ED25519_SK, SkPublicKey

    if global_ and repo:
        raise UsageError("--global and --repo exclude each other", "pick one scope")
    check_email(email)
    host = app.host
    account = lookup_user(host, user or default_user())
    if key is None:
        candidates = [pub_path(default_key_path(account, t)) for t in (ED25519_SK, ECDSA_SK)]
        found = [c for c in candidates if host.exists(c)]
        if not found:
            raise UsageError(f"no {candidates[0]} or {candidates[1]}",
                             "name the key with --key, or make one: yktool ssh keygen")
        pub = found[0]
    else:
        pub = PurePosixPath("/") / key
    if not str(pub).endswith(".pub"):
        pub = pub_path(pub)
    public, _comment = SkPublicKey.parse_line(host.read_text(pub))
    credential_id = ""
    bare = PurePosixPath(str(pub)[:-4])
    if host.exists(bare):
        private = load_private(host, bare)
        if private.public == public:
            credential_id = credential_id_b64(private)
    repo_path = PurePosixPath("/") / repo if repo else None
    signers = PurePosixPath("/") / allowed_signers if allowed_signers else None
    if app.dry_run:
        emit(app.json, {"ok": True, "dry_run": True, "email": email, "key": str(pub)},
             f"would configure git signing for {email} with {pub}")
        return
    setup = configure(host, account, email=email, pub_path=pub, public=public, repo=repo_path,
                      allowed_signers=signers)
    fields: dict[str, str | int | bool] = {
        "email": email, "user": account.name, "allowed_signers": str(setup.allowed_signers),
        "config_scope": f"repo:{repo_path}" if repo_path else "global", "config_file": str(setup.config_file),
        "public_key": public.line(), "fingerprint": public.fingerprint}
    if credential_id:
        fields["credential_id"] = credential_id
    name = nickname_of_credential(host, credential_id, nickname)
    with Registry.update(host) as registry:
        registry.forget("git", email=email, config_file=str(setup.config_file))
        registry.record(name, "git", **fields)
    for note in setup.notes:
        info(note)
    emit(app.json, {"ok": True, "config_file": str(setup.config_file), "allowed_signers": str(setup.allowed_signers),
                    "config": setup.values, "changed": setup.changed, "fingerprint": public.fingerprint,
                    "notes": setup.notes},
         f"git signing configured in {setup.config_file}:\n{setup.shown}\n"
         f"allowed_signers: {setup.allowed_signers}" + ("" if setup.allowed_signers_changed else " (unchanged)"))
