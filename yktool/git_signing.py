"""Git commit and tag signing with an SSH security key.

Writes an `allowed_signers` line `EMAIL namespaces="git" TYPE BASE64` (entries kept sorted, no
duplicates; comment lines at the top kept) and sets, with the real `git config --file`:
gpg.format ssh, user.signingkey (the .pub), commit.gpgsign true, tag.gpgsign true,
gpg.ssh.allowedSignersFile. git always runs with HOME, GIT_CONFIG_GLOBAL and GIT_CONFIG_NOSYSTEM
pointed under the root, so the config of the machine running yktool is never read or written.
Paths inside the user's home are written as `~/…` (git expands `~` in both keys), so the config
means the same on the target host as under an offline root.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yktool.authorized_keys import existing_owner, key_position, tokens_of
from yktool.errors import Refused, ToolFailed, UsageError
from yktool.host import Host, Result
from yktool.inventory import Registry, Scalar, nickname_of_credential
from yktool.ssh.accounts import Account, refuse_user_links
from yktool.ssh.files import credential_id_b64, load_key_pair, pub_path
from yktool.ssh.keys import SkPrivateKey, SkPublicKey

GIT_CALLER_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_INDEX_FILE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_SYSTEM",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_NAMESPACE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
)
CONFIG_KEYS = ("gpg.format", "user.signingkey", "commit.gpgsign", "tag.gpgsign", "gpg.ssh.allowedSignersFile")


def allowed_signer_line(email: str, public: SkPublicKey) -> str:
    return f'{email} namespaces="git" {public.line()}'


def check_email(email: str) -> None:
    # control characters (ESC, BEL, DEL …) would reach allowed_signers, git config and terminals
    if any(not c.isprintable() and not c.isspace() for c in email):
        raise UsageError(
            f"{email!r} cannot be an allowed_signers principal: it has control characters",
            "give one email address of printable characters",
        )
    if not email or any(c.isspace() for c in email) or "," in email or '"' in email:
        raise UsageError(
            f"{email!r} cannot be an allowed_signers principal",
            "give one email address without spaces, commas or quotes",
        )


def merge_allowed_signers(existing: bytes, line: str) -> tuple[bytes, bool]:
    """The file with `line` added: the header (comments up to a blank line) kept on top, entries
    sorted and unique, each with the comment lines just above it."""
    text = existing.decode("utf-8", "surrogateescape")
    lines = text.splitlines()
    head: list[str] = []
    index = 0
    while index < len(lines) and (not lines[index].strip() or lines[index].lstrip().startswith("#")):
        head.append(lines[index])
        index += 1
    # each entry travels with the comment lines just above it (`# Bob's laptop`); the file's
    # own header ends at its last blank line before the first entry
    groups: dict[str, list[str]] = {}
    pending: list[str] = []
    while head and head[-1].strip():
        pending.insert(0, head.pop())
    for entry in lines[index:]:
        if not entry.strip():
            continue
        if entry.lstrip().startswith("#"):
            pending.append(entry)
            continue
        if entry in groups:  # a duplicate line goes; its comments stay with the first
            groups[entry][-1:-1] = pending
        else:
            groups[entry] = [*pending, entry]
        pending = []
    normalised = {" ".join(entry.split()) for entry in groups}
    added = " ".join(line.split()) not in normalised
    if added:
        groups[line] = [line]
    merged = [ln for entry in sorted(groups) for ln in groups[entry]] + pending
    out = "".join(h + "\n" for h in head) + "".join(m + "\n" for m in merged)
    data = out.encode("utf-8", "surrogateescape")
    return data, added or data != existing


@dataclass
class SigningSetup:
    config_file: PurePosixPath
    allowed_signers: PurePosixPath
    values: dict[str, str]
    allowed_signers_changed: bool
    shown: str  # the signing keys as `git config --file … --get` reads them afterwards
    changed: list[str]
    notes: list[str]
    fingerprint: str = ""


class Git:
    """The real git, confined to the root: HOME and the global config under it, no system config."""

    def __init__(self, host: Host, account: Account) -> None:
        self.host = host
        self.account = account

    def env(self) -> dict[str, str | None]:
        home = str(self.host.path(self.account.home))
        return {
            # the caller's shell may be inside git (a hook, `rebase --exec`): its repository and
            # `-c` values must not steer where this git reads or writes
            **dict.fromkeys(GIT_CALLER_VARIABLES),
            "HOME": home,
            "GIT_CONFIG_GLOBAL": str(self.host.path(self.account.home / ".gitconfig")),
            "GIT_CONFIG_NOSYSTEM": "1",
            "XDG_CONFIG_HOME": str(self.host.path(self.account.home / ".config")),
            "GIT_TERMINAL_PROMPT": "0",
        }

    def run(self, *args: str, check: bool = True) -> Result:
        return self.host.run(["git", *args], env=self.env(), check=check)

    def git_dir(self, repo: PurePosixPath) -> PurePosixPath:
        """The repository's git folder, as a path inside the root."""
        real_repo = self.host.path(repo)
        if not real_repo.is_dir():
            raise UsageError(f"{repo} is not a folder", "name a git repository with --repo")
        # root configuring a user's repository: git's safe.directory check would call it "dubious";
        # we only read where its git folder is, so trust this one path for this one command
        result = self.run(
            "-c", f"safe.directory={real_repo}", "-C", str(real_repo), "rev-parse", "--absolute-git-dir", check=False
        )
        if result.returncode != 0:
            raise UsageError(f"{repo} is not a git repository", "run `git init` there first, or name another")
        real = PurePosixPath(result.text.strip())
        try:
            inside = PurePosixPath("/") / real.relative_to(self.host.root)
        except ValueError:
            raise UsageError(f"the git folder of {repo} lies outside the root", "name a repository inside it") from None
        # a `.git` file (gitdir: …) is the checkout owner's to write: root follows it only to a
        # git folder of that same owner, never into root's or another user's repository
        if self.host.owner(inside)[0] != self.host.owner(repo)[0]:
            raise Refused(
                f"the git folder of {repo} ({inside}) belongs to another owner than the checkout",
                "name the repository that holds its own git folder",
            )
        return inside

    @contextlib.contextmanager
    def _private_copy(self, config_file: PurePosixPath) -> Iterator[Path]:
        """The config file copied (read through Host's walk) into a folder only root can enter.

        git writes a config through `config.lock` + rename *next to the file a link points at*:
        run as root on a user's ~/.gitconfig, a link swapped in at the right moment would have
        git rewrite /etc/shadow. So git only ever sees this copy; yktool writes the result back
        with Host.write_file, which refuses a user's link."""
        folder = Path(tempfile.mkdtemp(prefix="yktool-git-"))
        try:
            copy = folder / "config"
            if self.host.is_file(config_file):
                copy.write_bytes(self.host.read_bytes(config_file))
            yield copy
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _config(self, copy: Path, shown: PurePosixPath, *args: str, check: bool = True) -> Result:
        env = {**self.env(), "GIT_CONFIG_GLOBAL": os.devnull}
        try:
            return self.host.run(["git", "config", "--file", str(copy), *args], env=env, check=check, cwd=copy.parent)
        except ToolFailed as exc:
            raise ToolFailed(exc.message.replace(str(copy), str(shown)), exc.hint) from None

    def edit(
        self,
        config_file: PurePosixPath,
        changes: dict[str, str],
        *,
        owner: tuple[int, int] | None = None,
        backup: bool = False,
    ) -> None:
        """Set `changes` in `config_file` with the real `git config`, on a private copy written
        back atomically; the file keeps its mode and owner (a new one: 0644, `owner`)."""
        if not changes:
            return
        with self._private_copy(config_file) as copy:
            for key, value in changes.items():
                self._config(copy, config_file, key, value)
            present = self.host.is_file(config_file)
            mode = self.host.mode(config_file) if present else 0o644
            keep = existing_owner(self.host, config_file) if present else owner
            self.host.write_file(config_file, copy.read_bytes(), mode, owner=keep, backup=backup)

    def set(self, config_file: PurePosixPath, key: str, value: str) -> None:
        self.edit(config_file, {key: value})

    def get(self, config_file: PurePosixPath, key: str) -> str | None:
        with self._private_copy(config_file) as copy:
            result = self._config(copy, config_file, "--get", key, check=False)
        return result.text.strip() if result.returncode == 0 else None


def config_file_for(git: Git, repo: PurePosixPath | None) -> PurePosixPath:
    """--global: the user's ~/.gitconfig under the root; --repo: that repository's config."""
    if repo is None:
        return git.account.home / ".gitconfig"
    return git.git_dir(repo) / "config"


def add_allowed_signer(
    host: Host, signers: PurePosixPath, email: str, public: SkPublicKey, owner: tuple[int, int] | None
) -> bool:
    """Merge `email`'s line for `public` into an allowed_signers file (made 0644 with `owner`,
    its folder 0700, when new; an existing file keeps its mode and owner). Read and written
    through Host's walk: a user's link at or above the file is refused, never written through.
    Returns whether the file changed."""
    refuse_user_links(host, signers)
    present = host.is_file(signers)
    existing = host.read_bytes(signers) if present else b""
    data, changed = merge_allowed_signers(existing, allowed_signer_line(email, public))
    if not changed:
        return False
    if not host.is_dir(signers.parent):
        host.mkdir(signers.parent, 0o700, owner)
    if present:
        host.write_file(signers, data, host.mode(signers), owner=existing_owner(host, signers))
    else:
        host.write_file(signers, data, 0o644, owner=owner)
    return True


def add_revoked_signer(host: Host, path: PurePosixPath, public: SkPublicKey, owner: tuple[int, int] | None) -> bool:
    """List `public` in a git/ssh-keygen revocation file (gpg.ssh.revocationFile), every other
    byte kept; through Host's walk like `add_allowed_signer`. Returns whether it was added."""
    refuse_user_links(host, path)
    present = host.is_file(path)
    existing = host.read_bytes(path) if present else b""
    line = public.line().encode("ascii")
    if line in existing.splitlines():
        return False
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    if present:
        host.write_file(path, existing + line + b"\n", host.mode(path), owner=existing_owner(host, path))
    else:
        host.write_file(path, line + b"\n", 0o644, owner=owner)
    return True


def configure(
    host: Host,
    account: Account,
    *,
    email: str,
    pub_path: PurePosixPath,
    public: SkPublicKey,
    repo: PurePosixPath | None = None,
    allowed_signers: PurePosixPath | None = None,
    set_email: bool = True,
) -> SigningSetup:
    """Write the allowed_signers line and the git signing config; returns what is now set."""
    check_email(email)
    git = Git(host, account)
    config_file = config_file_for(git, repo)
    signers = allowed_signers or default_allowed_signers(account)
    # git itself writes through a linked config file, so that one is checked too
    refuse_user_links(host, signers)
    refuse_user_links(host, config_file)
    owner = account.owner()

    changed = add_allowed_signer(host, signers, email, public, owner)

    values = {
        "gpg.format": "ssh",
        "user.signingkey": account.display(pub_path),
        "commit.gpgsign": "true",
        "tag.gpgsign": "true",
        "gpg.ssh.allowedSignersFile": account.display(signers),
    }
    notes: list[str] = []
    if set_email:
        current = git.get(config_file, "user.email")
        if current is None:
            values["user.email"] = email
        elif current != email:
            # the person's own setting wins; say why their commits may show another signer name
            notes.append(f"user.email stays {current} (signatures name {email}, the allowed_signers principal)")
    new_config = not host.exists(config_file)
    # a new file belongs to the user (or, in a repository, to the folder's owner)
    new_owner = owner if repo is None else existing_owner(host, config_file.parent)
    changes = {k: v for k, v in values.items() if git.get(config_file, k) != v}
    git.edit(config_file, changes, owner=new_owner, backup=not new_config)
    # the proof: the real git reads every value back
    read_back = {k: git.get(config_file, k) for k in values}
    wrong = [k for k, v in values.items() if read_back[k] != v]
    if wrong:
        raise ToolFailed(
            f"git does not read {', '.join(wrong)} back from {config_file}",
            "check the file by hand, then run the same command again",
        )
    shown = "\n".join(f"{k}={read_back[k]}" for k in values)
    return SigningSetup(config_file, signers, values, changed, shown, sorted(changes), notes)


def _split_options(options: str) -> list[str]:
    """Comma-separated options; commas inside quotes do not split."""
    out, current, quoted = [], "", False
    for ch in options:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append(current)
            current = ""
        else:
            current += ch
    if current:
        out.append(current)
    return out


def expire_signer_lines(existing: bytes, blob: bytes, before: datetime.datetime) -> tuple[bytes, int]:
    """Give every allowed_signers line of `blob` the option valid-before="…Z" (UTC); other lines
    stay byte for byte. git passes each commit's date to ssh-keygen (-Overify-time), so commits
    signed before `before` still verify and anything the old key signs later does not."""
    stamp = before.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%SZ")
    out: list[str] = []
    changed = 0
    for raw in existing.decode("utf-8", "surrogateescape").splitlines(keepends=True):
        body = raw.rstrip("\r\n")
        tokens = tokens_of(body)
        found = None if body.lstrip().startswith("#") else key_position(tokens)
        if found is None or found[1] != blob or found[0] not in (1, 2):
            out.append(raw)
            continue
        index = found[0]
        options = (
            [o for o in _split_options(tokens[1]) if not o.lower().startswith("valid-before=")] if index == 2 else []
        )
        options.append(f'valid-before="{stamp}"')
        line = " ".join([tokens[0], ",".join(options), *tokens[index:]])
        out.append(line + raw[len(body) :])
        changed += line != body
    return "".join(out).encode("utf-8", "surrogateescape"), changed


def expire_signer(host: Host, path: PurePosixPath, public: SkPublicKey, before: datetime.datetime) -> int:
    """Retire a (lost) key in an allowed_signers file without un-verifying its past commits;
    returns how many lines changed. The old file is backed up."""
    refuse_user_links(host, path)
    if not host.is_file(path):
        return 0
    data, changed = expire_signer_lines(host.read_bytes(path), public.blob(), before)
    if changed:
        host.write_file(path, data, host.mode(path), owner=existing_owner(host, path))
    return changed


@dataclass
class Signer:
    """What `add_signer` did: the allowed_signers file, whether anything changed, and the git
    config when the key signs (None when it is only accepted)."""

    allowed_signers: PurePosixPath
    changed: bool
    setup: SigningSetup | None


def add_signer(
    host: Host,
    account: Account,
    key: SkPrivateKey | SkPublicKey,
    *,
    email: str,
    nickname: str | None,
    signing_key: PurePosixPath | None = None,
    allowed_signers: PurePosixPath | None = None,
    repo: PurePosixPath | None = None,
) -> Signer:
    """Accept the key's git signatures for `email` (its allowed_signers line); with `signing_key`
    (the key's .pub) git also signs with it, in the user's global config or `repo`'s
    (`configure`, proven by git reading every value back). Recorded in the registry (kind git)
    under `nickname`, else the key that made the credential (`Registry.record_git`).
    Every git enrollment of a flow ends here (`yktool git signing`: `configure_and_record`)."""
    public = key.public if isinstance(key, SkPrivateKey) else key
    signers = allowed_signers or default_allowed_signers(account)
    setup = None
    if signing_key is None:
        changed = add_allowed_signer(host, signers, email, public, account.owner())
    else:
        setup = configure(
            host, account, email=email, pub_path=signing_key, public=public, repo=repo, allowed_signers=signers
        )
        changed = bool(setup.changed or setup.allowed_signers_changed)
    _record_signer(host, account, key, email=email, nickname=nickname, allowed_signers=signers, setup=setup, repo=repo)
    return Signer(signers, changed, setup)


def configure_and_record(
    host: Host,
    account: Account,
    *,
    email: str,
    pub: PurePosixPath,
    repo: PurePosixPath | None = None,
    allowed_signers: PurePosixPath | None = None,
    nickname: str | None = None,
) -> SigningSetup:
    """The whole `git signing` step: sign with the key of this .pub (or key-handle file), and
    record it; the config signs with this key now, so the key that signed there before stays
    recorded as only accepted (its allowed_signers line is still there)."""
    if not str(pub).endswith(".pub"):
        pub = pub_path(pub)
    public, _comment, private = load_key_pair(host, pub)
    setup = configure(
        host, account, email=email, pub_path=pub, public=public, repo=repo, allowed_signers=allowed_signers
    )
    _record_signer(
        host,
        account,
        private or public,
        email=email,
        nickname=nickname,
        allowed_signers=setup.allowed_signers,
        setup=setup,
        repo=repo,
    )
    return setup


def default_allowed_signers(account: Account) -> PurePosixPath:
    return account.home / ".ssh" / "allowed_signers"


def _record_signer(
    host: Host,
    account: Account,
    key: SkPrivateKey | SkPublicKey,
    *,
    email: str,
    nickname: str | None,
    allowed_signers: PurePosixPath,
    setup: SigningSetup | None = None,
    repo: PurePosixPath | None = None,
) -> None:
    """Record a git enrollment (kind git): `Registry.record_git` keeps one per key and place."""
    private, public = (key, key.public) if isinstance(key, SkPrivateKey) else (None, key)
    fields: dict[str, Scalar] = {"email": email, "user": account.name, "allowed_signers": str(allowed_signers)}
    if setup is not None:
        fields["config_scope"] = f"repo:{repo}" if repo else "global"
        setup.fingerprint = public.fingerprint
    fields |= {
        "config_file": str(setup.config_file) if setup else "",
        "public_key": public.line(),
        "fingerprint": public.fingerprint,
    }
    credential_id = credential_id_b64(private) if private else ""
    if credential_id:
        fields["credential_id"] = credential_id
    name = nickname_of_credential(host, credential_id, nickname)
    with Registry.update(host) as registry:
        registry.record_git(name, fields)
