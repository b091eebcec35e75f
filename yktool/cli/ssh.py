"""`yktool ssh …`: FIDO2-backed OpenSSH keys (ed25519-sk / ecdsa-sk) and authorized_keys.

The key is made through python-fido2 (no ssh-keygen or libfido2 needed); the files are exactly
those `ssh-keygen -t ed25519-sk` writes, and each result is read back with the real ssh-keygen.
PINs are typed (no echo) or read from stdin with --pin-stdin; never taken from argv.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import click

from yktool.authorized_keys import authorize_and_record, authorized_keys_path
from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit, info, warn
from yktool.errors import UsageError
from yktool.host import Host
from yktool.ssh.accounts import Account, default_user, lookup_user
from yktool.ssh.files import find_pubkey, load_key_pair, load_private
from yktool.ssh.keys import SkPrivateKey

if TYPE_CHECKING:
    from yktool.fido.session import KeySession

# yktool.ssh.enroll, yktool.keynames and the session are imported by the commands that use the
# security key: they load python-fido2, which `ssh authorize` and `--help` do without.


@contextmanager
def _session(app: AppContext, pin_stdin: bool) -> Iterator[KeySession]:
    from yktool.cli.prompts import CliInteraction
    from yktool.fido.session import open_session

    with open_session(app.key_spec, CliInteraction(pin_from_stdin=pin_stdin)) as session:
        yield session


def _account(app: AppContext, user: str | None) -> Account:
    return lookup_user(app.host, user or default_user())


def _maybe_account(app: AppContext, user: str | None) -> Account | None:
    """The account for ownership when --output names the file: only when one can be found."""
    try:
        return _account(app, user)
    except UsageError:
        if user:
            raise
        return None


def _default_comment(host: Host, user: str) -> str:
    hostname = ""
    if host.exists("/etc/hostname"):
        hostname = host.read_text("/etc/hostname").strip()
    return f"{user}@{hostname}" if hostname else user


def _flag_names(key: SkPrivateKey) -> list[str]:
    names = ["touch-required" if key.touch_required else "no-touch-required"]
    if key.verify_required:
        names.append("verify-required")
    if key.resident:
        names.append("resident")
    return names


_pin_stdin = click.option("--pin-stdin", is_flag=True, help="Read the key's PIN from one stdin line.")
_nickname = click.option(
    "--nickname",
    default=None,
    help="Name of the physical key in the key registry (default: the name the registry "
    "knows it by, else primary / backup-N).",
)


@click.group("ssh")
def ssh() -> None:
    """FIDO2-backed OpenSSH keys (ed25519-sk, ecdsa-sk), authorized_keys and SSH signatures.

    \b
    Examples:
      yktool ssh keygen
      yktool ssh authorize --user alice
    """


@ssh.command("keygen")
@click.option(
    "--type",
    "-t",
    "type_name",
    type=click.Choice(["ed25519-sk", "ecdsa-sk"]),
    default="ed25519-sk",
    show_default=True,
    help="Key type; ecdsa-sk for keys without Ed25519.",
)
@click.option(
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="OPT",
    help="As ssh-keygen -O: resident, verify-required, no-touch-required, application=ssh:NAME, user=NAME. Repeatable.",
)
@click.option("--comment", "-C", default=None, help="Key comment (default USER@HOSTNAME of the root).")
@click.option(
    "--output",
    "-f",
    "output",
    default=None,
    help="Key file inside the root (default ~USER/.ssh/id_ed25519_sk); the .pub goes next to it.",
)
@click.option("--user", "-u", default=None, help="Whose key: home from the root's /etc/passwd (default: you).")
@click.option("--force", is_flag=True, help="Replace existing key files (backed up first).")
@_pin_stdin
@_nickname
@pass_app
def keygen(
    app: AppContext,
    type_name: str,
    options: tuple[str, ...],
    comment: str | None,
    output: str | None,
    user: str | None,
    force: bool,
    pin_stdin: bool,
    nickname: str | None,
) -> None:
    """Make a FIDO2-backed SSH key on the security key (one touch; the PIN when the key has one).

    Writes the key-handle file (0600) and the .pub (0644) in OpenSSH's own formats; the private
    key never leaves the security key. Existing files are not replaced without --force (exit 4).

    \b
    Examples:
      yktool ssh keygen
      yktool ssh keygen --user alice -O resident -O verify-required
      yktool --root /mnt ssh keygen --user alice --type ecdsa-sk
    """
    from yktool.ssh import enroll

    host = app.host
    opts = enroll.parse_options(options, type_name)
    account: Account | None
    if output is None:
        account = _account(app, user)
        path = enroll.default_key_path(account, opts.key_type)
    else:
        account = _maybe_account(app, user)
        path = PurePosixPath("/") / output
    owner = account.owner() if account else None
    user_name = account.name if account else (user or default_user())
    if comment is None:
        comment = _default_comment(host, user_name)
    enroll.check_free(host, path, force)  # before the key is even opened
    if app.dry_run:
        emit(
            app.json,
            {"ok": True, "dry_run": True, "path": str(path), "type": opts.key_type, "flags": opts.flags},
            f"would make a {type_name} key (flags 0x{opts.flags:02x}) and write {path} and {path}.pub",
        )
        return
    with _session(app, pin_stdin) as session:
        made = enroll.keygen(
            host, session, opts, path=path, comment=comment, owner=owner, user=user_name, nickname=nickname, force=force
        )
    key, proof = made.key, made.proof
    if proof.startswith("not checked"):
        warn(f"the key files were {proof}; install openssh-client to have them read back")
    data = {
        "ok": True,
        "path": str(path),
        "pub_path": str(enroll.pub_path(path)),
        "public_key": key.public.line(key.comment),
        "fingerprint": key.public.fingerprint,
        "type": key.public.key_type,
        "flags": key.flags,
        "options": _flag_names(key),
        "credential_id": enroll.credential_id_b64(key),
        "verified": proof,
    }
    emit(
        app.json,
        data,
        f"Made {key.public.label} key {key.public.fingerprint} ({', '.join(_flag_names(key))})\n"
        f"  private key handle: {path}\n  public key:         {enroll.pub_path(path)}\n"
        f"  {key.public.line(key.comment)}\n  {proof}",
    )


@ssh.command("download")
@click.option("--user", "-u", default=None, help="Whose ~/.ssh gets the files (default: you).")
@click.option("--output-dir", default=None, help="Folder inside the root (default ~USER/.ssh).")
@click.option("--force", is_flag=True, help="Replace existing files that differ (backed up first).")
@_pin_stdin
@_nickname
@pass_app
def download(
    app: AppContext, user: str | None, output_dir: str | None, force: bool, pin_stdin: bool, nickname: str | None
) -> None:
    """Rebuild key files from the resident SSH keys on the security key (like `ssh-keygen -K`; PIN).

    A key the registry knows gets back its file name, comment and flags, so the files come back
    byte for byte; others are named id_ed25519_sk_rk[_APP][_USER] with the application as comment.

    \b
    Examples:
      yktool ssh download
      yktool ssh download --user alice --output-dir /home/alice/.ssh
    """
    from yktool.keynames import choose_nickname
    from yktool.ssh import enroll

    host = app.host
    account = _account(app, user)
    with _session(app, pin_stdin) as session:
        found = enroll.resident_keys(session)
        aaguid = session.aaguid
        name = choose_nickname(session, host, nickname)
    plans = enroll.plan_download(
        host, found, account, PurePosixPath("/") / output_dir if output_dir is not None else None, force=force
    )
    if app.dry_run:
        emit(
            app.json,
            {"ok": True, "dry_run": True, "keys": [{"path": str(p.path), "state": p.state} for p in plans]},
            "\n".join(f"would write {p.path} ({p.state})" for p in plans) or "no resident SSH keys on this key",
        )
        return
    done = enroll.apply_download(host, plans, account, nickname=name, aaguid=aaguid)
    out = [
        {
            "path": str(p.path),
            "state": "unchanged" if p.state == "unchanged" else "written",
            "fingerprint": p.key.public.fingerprint,
            "application": p.key.public.application,
            "options": _flag_names(p.key),
        }
        for p in done
    ]
    if not out:
        info("no resident SSH keys (application ssh:…) on this key")
    emit(
        app.json,
        {"ok": True, "keys": out},
        "\n".join(f"{o['path']}: {o['state']} ({o['fingerprint']}, {o['application']})" for o in out),
    )


@ssh.command("authorize")
@click.option("--user", "-u", required=True, help="The account to log in to (its ~/.ssh/authorized_keys).")
@click.option("--pubkey", default=None, help="The .pub file inside the root (default ~USER/.ssh/id_ed25519_sk.pub).")
@click.option("--file", "file_", default=None, help="authorized_keys file inside the root, if not the user's own.")
@_nickname
@pass_app
def authorize(app: AppContext, user: str, pubkey: str | None, file_: str | None, nickname: str | None) -> None:
    """Add a security-key SSH public key to a user's authorized_keys.

    Existing lines, options, comments, blank lines and line endings stay byte for byte; a key
    already there is not added again. A key made with no-touch-required gets that option (sshd
    insists on a touch otherwise), a verify-required key gets verify-required.

    \b
    Examples:
      yktool ssh authorize --user alice
      yktool ssh authorize --user git --pubkey /home/alice/.ssh/id_ed25519_sk.pub
    """
    host = app.host
    account = _account(app, user)
    pub = find_pubkey(host, account, pubkey)
    target = PurePosixPath("/") / file_ if file_ else None
    public, comment, private = load_key_pair(host, pub)
    if app.dry_run:
        emit(
            app.json,
            {"ok": True, "dry_run": True, "pubkey": str(pub)},
            f"would add {public.fingerprint} to {target or authorized_keys_path(account)}",
        )
        return
    done = authorize_and_record(host, account, private or public, comment=comment, target=target, nickname=nickname)
    fp = done.public.fingerprint
    data = {"ok": True, "path": str(done.path), "added": done.added, "fingerprint": fp, "options": done.options}
    if done.added:
        text = f"Added {fp} to {done.path}" + (f" with {','.join(done.options)}" if done.options else "")
    else:
        text = f"{done.path} already holds {fp}; nothing changed"
    emit(app.json, data, text)


@read_only  # writes only the .sig files it is asked for, no shared file of the root
@ssh.command("sign")
@click.option("-n", "--namespace", required=True, help="Signature namespace, e.g. git or file.")
@click.option("-f", "--key", "key_file", required=True, help="Key-handle file (or its .pub) inside the root.")
@click.argument("files", nargs=-1, required=True)
@_pin_stdin
@pass_app
def sign(app: AppContext, namespace: str, key_file: str, files: tuple[str, ...], pin_stdin: bool) -> None:
    """Sign FILES with the security key as `ssh-keygen -Y sign` does: writes FILE.sig (SSHSIG).

    `-` signs stdin and prints the signature. Verify with
    `ssh-keygen -Y verify -f allowed_signers -I EMAIL -n NAMESPACE -s FILE.sig < FILE`.

    \b
    Examples:
      yktool ssh sign -n file -f ~/.ssh/id_ed25519_sk notes.txt
      git archive HEAD | yktool ssh sign -n file -f ~/.ssh/id_ed25519_sk - > release.sig
    """
    from yktool.ssh.enroll import sign as do_sign

    if "-" in files and app.json:
        raise UsageError(
            "`-` prints the signature on stdout, where --json puts its one document",
            "sign a file (FILE.sig is written), or leave out --json",
        )
    host = app.host
    key = load_private(host, PurePosixPath("/") / key_file)
    if "-" in files and pin_stdin and key.verify_required:
        raise UsageError("stdin cannot carry both the PIN and the data", "sign a file, or type the PIN")
    written = []
    with _session(app, pin_stdin) as session:
        for name in files:
            if name == "-":
                signature = do_sign(session, key, namespace, sys.stdin.buffer.read())
                click.echo(signature.decode("ascii"), nl=False)
                continue
            path = PurePosixPath("/") / name
            signature = do_sign(session, key, namespace, host.read_bytes(path))
            sig_path = path.with_name(path.name + ".sig")
            host.write_file(sig_path, signature, 0o644, backup=False)
            written.append(str(sig_path))
            info(f"Signed {name} with {key.public.fingerprint}: {sig_path}")
    if app.json:
        emit(True, {"ok": True, "signatures": written, "fingerprint": key.public.fingerprint}, "")
