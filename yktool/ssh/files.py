"""The files of a FIDO2-backed OpenSSH key, as root writes and reads them: the key-handle file and
its .pub, their record in the key registry, and the proof that the real ssh-keygen reads them back.

Nothing here talks to the security key (that is `yktool.ssh.enroll`), so the commands and
library steps that only read or place existing key files never load python-fido2.
"""

from __future__ import annotations

import base64
from pathlib import Path, PurePosixPath

from yktool.errors import Refused, ToolFailed, UsageError, YktoolError
from yktool.host import Host
from yktool.inventory import Registry, Scalar
from yktool.ssh.accounts import Account, refuse_user_links
from yktool.ssh.keys import DEFAULT_FILES, ECDSA_SK, ED25519_SK, FLAG_USER_PRESENCE, SkPrivateKey, SkPublicKey


def default_key_path(account: Account, key_type: str, resident_suffix: str | None = None) -> PurePosixPath:
    """~/.ssh/id_ed25519_sk (or id_ecdsa_sk); downloaded keys: id_…_sk_rk[_SUFFIX] like ssh-keygen -K."""
    name = DEFAULT_FILES[key_type]
    if resident_suffix is not None:
        name += "_rk" + (f"_{resident_suffix}" if resident_suffix else "")
    return account.ssh_dir / name


def load_private(host: Host, path: str | PurePosixPath) -> SkPrivateKey:
    """Read a key-handle file; `KEY.pub` is taken to mean `KEY` (git passes the .pub path)."""
    text_path = str(path)
    if text_path.endswith(".pub"):
        bare = text_path[:-4]
        if host.exists(bare):
            text_path = bare
        else:
            raise UsageError(
                f"{path} is a public key and {bare} does not exist",
                "signing needs the key-handle file that `yktool ssh keygen` wrote next to it",
            )
    return SkPrivateKey.from_file(host.read_bytes(text_path), text_path)


def pub_path(path: PurePosixPath) -> PurePosixPath:
    return path.with_name(path.name + ".pub")


def check_free(host: Host, path: PurePosixPath, force: bool) -> None:
    """Refuse (exit 4) to overwrite an existing key file without --force: checked before the key
    is touched, so nothing changes."""
    for p in (path, pub_path(path)):
        refuse_user_links(host, p)
        if host.exists(p) and not force:
            raise Refused(
                f"{p} already exists",
                "choose another --output, or pass --force to replace it "
                "(the old file is backed up under /var/backups/yktool)",
            )
        if host.path(p).is_dir():
            raise UsageError(f"{p} is a folder", "name a file with --output")


def write_key_files(
    host: Host, key: SkPrivateKey, path: PurePosixPath, owner: tuple[int, int] | None
) -> tuple[Path, Path]:
    """The key-handle file (0600) and the .pub (0644); a missing folder is made 0700."""
    refuse_user_links(host, path)
    refuse_user_links(host, pub_path(path))
    if not host.path(path.parent).is_dir():
        host.mkdir(path.parent, 0o700, owner)
    private = host.write_file(path, key.to_file(), 0o600, owner=owner)
    public = host.write_file(pub_path(path), key.pub_file(), 0o644, owner=owner)
    return private, public


def credential_id_b64(key: SkPrivateKey) -> str:
    return base64.b64encode(key.key_handle).decode("ascii")


def record_key(host: Host, key: SkPrivateKey, path: PurePosixPath, *, nickname: str, aaguid: str, user: str) -> None:
    """Note the key in the registry so `replace` can find it (public key, fingerprint, paths)."""
    fields: dict[str, Scalar] = {
        "role": "key-file",
        "credential_id": credential_id_b64(key),
        "user": user,
        "application": key.public.application,
        "public_key": key.public.line(),
        "fingerprint": key.public.fingerprint,
        "path": str(path),
        "pub_path": str(pub_path(path)),
        "flags": key.flags,
        "comment": key.comment,
    }
    with Registry.update(host) as registry:
        registry.ensure_key(nickname, aaguid)
        # one entry per credential: a re-made or moved file replaces the old entry
        registry.forget("ssh", credential_id=fields["credential_id"], path=str(path))
        registry.record(nickname, "ssh", **fields)


def recorded_file(host: Host, key: SkPrivateKey) -> dict[str, Scalar] | None:
    """What the registry remembers of this credential's files (path, comment, flags), if anything."""
    try:
        registry = Registry.load(host)
    except YktoolError:
        return None
    cid = credential_id_b64(key)
    for _record, entry in registry.enrollments("ssh"):
        # only the key's own files: an authorized_keys entry carries a path too
        if entry.get("credential_id") == cid and "path" in entry and entry.get("role", "key-file") == "key-file":
            return entry
    return None


def restore_from_record(key: SkPrivateKey, entry: dict[str, Scalar] | None) -> SkPrivateKey:
    """Bring back what the key does not store: the comment, and no-touch-required."""
    if entry is None:
        return key
    flags = key.flags
    recorded_flags = entry.get("flags")
    if isinstance(recorded_flags, int) and not recorded_flags & FLAG_USER_PRESENCE:
        flags &= ~FLAG_USER_PRESENCE
    comment = entry.get("comment")
    return SkPrivateKey(
        key.public, flags, key.key_handle, comment if isinstance(comment, str) else key.comment, key.reserved
    )


def prove_files(host: Host, path: PurePosixPath, key: SkPrivateKey, *, required: bool = False) -> str:
    """Read the written file back with the real ssh-keygen: `-y` must print exactly the .pub line.
    Returns what was proven; a mismatch is a ToolFailed, and so is a missing ssh-keygen when the
    proof is `required` (else it is said: not checked)."""
    if host.which("ssh-keygen") is None:
        if required:
            raise ToolFailed(
                f"ssh-keygen is not installed: {path} cannot be proven",
                "install openssh-client, then run the same command again",
            )
        return "not checked (ssh-keygen is not installed here)"
    with host.private_copy(path) as copy:  # ssh-keygen never opens the user's path as root
        result = host.run(["ssh-keygen", "-y", "-f", str(copy)], check=False)
        why = result.error_text.replace(str(copy), str(path))
    if result.returncode != 0 or result.stdout != key.pub_file():
        raise ToolFailed(
            f"ssh-keygen does not read {path} back as the key just made: {why}",
            "this is a bug in yktool; the credential exists on the key, the file is wrong",
        )
    return "ssh-keygen -y reads the key back"


def find_pubkey(host: Host, account: Account, given: str | None) -> PurePosixPath:
    """The .pub to use: `given` (a path inside the root), else the account's id_ed25519_sk.pub or
    id_ecdsa_sk.pub."""
    if given is not None:
        return PurePosixPath("/") / given
    candidates = [pub_path(default_key_path(account, t)) for t in (ED25519_SK, ECDSA_SK)]
    for candidate in candidates:
        if host.exists(candidate):
            return candidate
    raise UsageError(
        f"no {candidates[0]} or {candidates[1]}",
        f"name the key's .pub, or make one: yktool ssh keygen --user {account.name}",
    )


def load_key_pair(host: Host, pub: PurePosixPath) -> tuple[SkPublicKey, str, SkPrivateKey | None]:
    """The public key and comment of a .pub, and the key-handle file beside it when it matches
    (it carries the flags: no-touch-required, verify-required)."""
    public, comment = SkPublicKey.parse_line(host.read_text(pub))
    text = str(pub)
    if text.endswith(".pub") and host.exists(text[:-4]):
        try:
            private = load_private(host, text[:-4])
        except UsageError:
            return public, comment, None
        if private.public == public:
            return public, comment, private.with_comment(comment)
    return public, comment, None
