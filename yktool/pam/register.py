"""`pam register`: make a pam_u2f credential on the key, prove it, merge it into the authfile
(plain under the root, or age-encrypted for agenix), record it in the key registry."""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from yktool import nix
from yktool.errors import PermissionDenied, Refused, UsageError
from yktool.host import Host
from yktool.inventory import Registry
from yktool.pam import stack
from yktool.pam.authfile import (
    USER_AUTHFILE,
    Authfile,
    U2fCredential,
    credential_from,
    merge_credential,
    options_string,
)
from yktool.pam.host_facts import EDDSA_MIN_VERSION, check_origin, installed_version, read_users, version_text
from yktool.pam.proof import prove_credential
from yktool.ssh.accounts import refuse_user_links

if TYPE_CHECKING:
    from yktool.fido.session import KeySession


@dataclass
class Target:
    """Where the credential goes: a plain authfile under the root, or an age file."""

    authfile: str | None = None  # path inside the root
    age_file: Path | None = None  # operator's path (the flake checkout)
    recipients: list[Any] = field(default_factory=list)  # agefile.Recipient
    identity: Any = None  # agefile.Identities, to read an existing file
    mode: int = 0o644
    owner: tuple[int, int] | None = None
    lost_recipients: int = 0  # age1… recipients of the old file not given now


def plain_target(host: Host, user: str, authfile: str | None) -> Target:
    """--authfile: the central file (mode 0644, root) or a user's own u2f_keys (0600, theirs)."""
    users = read_users(host)
    if authfile is None or authfile == "~":
        if user not in users:
            raise UsageError(
                f"user {user} is not in {host.root}/etc/passwd",
                "give --authfile /etc/u2f_mappings, or create the user first",
            )
        authfile = str(PurePosixPath(users[user].home) / USER_AUTHFILE)
    if not authfile.startswith("/"):
        raise UsageError(f"--authfile {authfile}: give an absolute path inside the root", "e.g. /etc/u2f_mappings")
    if host.exists("/etc/NIXOS") and authfile.startswith(("/etc/", "/run/")):
        # /etc is generated and /run/agenix rewritten at every activation: the key would vanish
        raise Refused(
            f"{host.root} is NixOS: {authfile} is generated at activation, a key "
            "written there is lost at the next switch",
            "register into the agenix secret instead: --age-host-key "
            "/etc/ssh/ssh_host_ed25519_key.pub (and --age-identity to keep its lines)",
        )
    owner = None
    mode = 0o644
    u = users.get(user)
    if u is not None and u.home not in ("", "/") and authfile.startswith(u.home.rstrip("/") + "/"):
        # pam_u2f refuses a file owned by anyone but the user or root; keep it private
        mode, owner = 0o600, (u.uid, u.gid)
    refuse_user_links(host, authfile)
    return Target(authfile=authfile, mode=mode, owner=owner)


def read_current(host: Host, target: Target) -> tuple[str, bool]:
    """The authfile text now (plain, or decrypted from the age file) and whether it exists."""
    from yktool import agefile  # lazy: it loads pyrage

    if target.authfile is not None:
        # through Host's walk: a user's link at (or above) the authfile is refused, not followed
        st = host.lstat(target.authfile)
        if st is None:
            return "", False
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{target.authfile} is not a regular file", "name the authfile itself")
        try:
            return host.read_text(target.authfile), True
        except PermissionDenied as exc:
            raise PermissionDenied(
                exc.message, "run as root (or the file's owner) so the existing lines can be kept"
            ) from None
    assert target.age_file is not None  # noqa: S101
    # the operator's file, on this machine: read through the walk too (as root, a link a user
    # controls in a checkout under their home is refused, not followed)
    local, age_path = Host(Path("/")), str(target.age_file.absolute())
    if not local.exists(age_path):
        return "", False
    try:
        data = local.read_bytes(age_path)
    except OSError as exc:
        raise UsageError(
            f"{target.age_file}: cannot read ({exc.strerror})", "check the path and its permissions"
        ) from None
    if target.identity is None:
        raise UsageError(
            f"{target.age_file} exists and yktool cannot read it without an identity",
            "pass --age-identity PATH (a private key of one of its recipients) so "
            "its lines are kept; yktool never overwrites it blind",
        )
    plain = agefile.decrypt(data, target.identity, what=str(target.age_file))
    old_tags, old_x25519 = agefile.header_recipients(data)
    new_tags = {agefile.ssh_tag(r) for r in target.recipients}
    lost = [t for t in old_tags if t not in new_tags]
    if lost:
        # re-encrypting without that host key would leave the host unable to read its authfile
        raise Refused(
            f"{target.age_file} is also encrypted to {len(lost)} ssh-ed25519 key(s) "
            f"not given now (age tag {', '.join(lost)}): that host would no longer "
            "decrypt its authfile",
            "pass every recipient of secrets.nix for this file (--age-host-key / --age)",
        )
    new_x25519 = sum(1 for r in target.recipients if r.kind == "x25519")
    if old_x25519 > new_x25519:
        target.lost_recipients = old_x25519 - new_x25519
    return plain.decode("utf-8", "surrogateescape"), True


def write_target(host: Host, target: Target, text: str) -> str:
    """Write atomically (backup of a plain file first); returns where it went."""
    from yktool import agefile  # lazy: it loads pyrage

    data = text.encode("utf-8", "surrogateescape")
    if target.authfile is not None:
        if target.owner is not None:
            _ensure_user_dirs(host, target)
        host.write_file(target.authfile, data, target.mode, owner=target.owner)
        return target.authfile
    assert target.age_file is not None  # noqa: S101
    encrypted = agefile.encrypt(data, target.recipients)
    local = Host(Path("/"))
    # not .resolve(): that would follow a user's link as root before the walk could refuse it
    local.write_file(str(target.age_file.absolute()), encrypted, 0o644, backup=False)
    return str(target.age_file)


def _ensure_user_dirs(host: Host, target: Target) -> None:
    """~/.config and ~/.config/Yubico owned by the user, so pam_u2f (openasuser) can reach it."""
    assert target.authfile is not None and target.owner is not None  # noqa: S101
    parent = PurePosixPath(target.authfile).parent
    missing = []
    p = parent
    while not host.exists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        host.mkdir(d, 0o700, owner=target.owner)


@dataclass
class RegisterRequest:
    user: str
    origin: str
    target: Target
    presence: bool = True
    verification: bool = False
    pin: bool = False
    resident: bool = False
    algorithm: str = "es256"
    nickname: str | None = None
    services: tuple[str, ...] = ("sudo", "login", "greetd", "hyprlock")
    age_name: str = "yubikey-auth"


@dataclass(kw_only=True)
class RegisterResult:
    user: str
    origin: str
    written_to: str | None
    changed: bool
    already_registered: bool
    lineno: int
    credential: U2fCredential | None
    keys_for_user: int
    nickname: str
    pam_version: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nix: dict[str, str] = field(default_factory=dict)
    pam_line: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "user": self.user,
            "origin": self.origin,
            "written_to": self.written_to,
            "changed": self.changed,
            "already_registered": self.already_registered,
            "line": self.lineno,
            "credential": self.credential.to_json() if self.credential else None,
            "keys_for_user": self.keys_for_user,
            "nickname": self.nickname,
            "pam_u2f_version": self.pam_version,
            "notes": self.notes,
            "warnings": self.warnings,
            "nix": self.nix,
            "pam_line": self.pam_line,
        }


def algorithm_check(host: Host, algorithm: str) -> tuple[str, list[str]]:
    """Refuse eddsa where the target's pam-u2f is known to be older than 1.2.0; warn when
    its version is unknown. Returns (version text, warnings)."""
    modules = [u.line.module for s in stack.u2f_services(host) for u in s.u2f_lines]
    version, source = installed_version(host, modules)
    warnings: list[str] = []
    if algorithm not in ("es256", "eddsa"):
        raise UsageError(f"algorithm {algorithm!r} is not offered", "use es256 (or eddsa)")
    if algorithm == "eddsa":
        if version is not None and version < EDDSA_MIN_VERSION:
            raise Refused(
                f"pam-u2f {version_text(version)} on the target ({source}) rejects "
                "eddsa credentials: sudo would stop accepting this key",
                "register with --algorithm es256 (the default), or upgrade pam-u2f to 1.2.0 or later first",
            )
        if version is None:
            warnings.append(
                f"{source}; eddsa needs pam-u2f 1.2.0 or later (Debian 12 ships 1.1.0) — es256 works everywhere"
            )
    return version_text(version), warnings


def pam_line_for(target: Target, origin: str, *, pin: bool, verification: bool) -> str:
    """The auth line for a plain PAM configuration using this authfile."""
    args = ["pam_u2f.so"]
    if target.authfile is not None and not target.authfile.endswith("/" + USER_AUTHFILE):
        args.append(f"authfile={target.authfile}")
    args += ["cue", f"origin={origin}"]
    if pin:
        args.append("pinverification=1")
    if verification:
        args.append("userverification=1")
    return "auth sufficient " + " ".join(args)


def nix_snippets(request: RegisterRequest) -> dict[str, str]:
    """What to paste into secrets.nix (an entry of its attribute set) and a NixOS module for
    the host (a whole `{ config, ... }: { … }` file)."""
    from yktool import agefile  # lazy: it loads pyrage

    target = request.target
    assert target.age_file is not None  # noqa: S101
    name = target.age_file.name
    secret = request.age_name
    entry = agefile.secrets_nix_entry(name, target.recipients)
    settings = [
        f"      authfile = config.age.secrets.{secret}.path;",
        f"      origin = {nix.string(request.origin)};",
        "      cue = true;",
    ]
    if request.pin:
        settings.append("      pinverification = 1;")
    if request.verification:
        settings.append("      userverification = 1;")
    body = [
        f"age.secrets.{secret} = {{",
        f"  file = ./secrets/{name};",
        "  # pam_u2f runs inside the screen locker as the user: it must be able to read it",
        '  mode = "0444";',
        "};",
        "security.pam.u2f = {",
        "  enable = true;",
        '  # "required" makes the touch mandatory on top of the password: switch to it only',
        "  # once `yktool pam check` passes and every user has a backup key",
        '  control = "sufficient";',
        "  settings = {",
        *[s[2:] for s in settings],
        "  };",
        "};",
        "# NixOS before 24.05: security.pam.u2f.authFile / .origin / .cue instead of settings",
        *[nix.attribute(f"security.pam.services.{svc}.u2fAuth", "true") for svc in request.services],
    ]
    host_cfg = "\n".join(
        [
            "# a NixOS module: import it from the host's configuration",
            "{ config, ... }:",
            "{",
            *["  " + ln for ln in body],
            "}",
        ]
    )
    return {"secrets.nix": entry, "configuration.nix": host_cfg}


def register(host: Host, session: KeySession, request: RegisterRequest) -> RegisterResult:
    """Make a pam_u2f credential on the key, prove it, merge it into the target, record it.

    Nothing is written before the new credential has produced an assertion with the same
    origin that verifies against the public key about to be stored. A key that already holds
    one of the user's credentials (found with a silent probe) is not registered twice.
    """
    from yktool.fido.session import EDDSA, ES256  # lazy: it loads fido2
    from yktool.keynames import choose_nickname  # lazy: it loads fido2

    origin = check_origin(request.origin)
    version, warnings = algorithm_check(host, request.algorithm)
    target = request.target
    current, existed = read_current(host, target)
    authfile = Authfile.parse(current)
    notes = authfile.problems()
    line = authfile.effective_line(request.user)
    if line is not None and line.error:
        raise Refused(
            f"line {line.lineno} of user {request.user} is malformed: {line.error}",
            "fix or remove that line by hand first (pam_u2f rejects it too); nothing was changed",
        )
    existing = authfile.credentials_of(request.user)
    on_key = next((c for c in existing if c.credential_id is not None and session.probe(origin, c.credential_id)), None)
    if on_key is not None:
        where = target.authfile or str(target.age_file)
        return RegisterResult(
            user=request.user,
            origin=origin,
            written_to=None,
            changed=False,
            already_registered=True,
            lineno=line.lineno if line else 0,
            credential=on_key,
            keys_for_user=len(existing),
            nickname=request.nickname or "",
            pam_version=version,
            notes=notes
            + [f"this key is already registered for {request.user} with origin {origin} in {where}; nothing changed"],
            warnings=warnings,
        )
    if (request.pin or request.verification) and not session.pin_is_set:
        raise UsageError(
            "+pin/+verification need a PIN on the key, and it has none", "set one first: yktool key pin set"
        )
    # the registry name of this physical key (silent probes, before the key changes), shared
    # with the ssh/git enrollments: --nickname, a name the key is known by, primary, backup-N
    nickname = choose_nickname(session, host, request.nickname)
    options = options_string(presence=request.presence, verification=request.verification, pin=request.pin)
    made = session.make_credential(
        origin,
        user_id=os.urandom(32),
        user_name=request.user,
        algorithms=(EDDSA if request.algorithm == "eddsa" else ES256,),
        resident=request.resident,
        uv=request.verification,
        exclude=[c for c in (e.credential_id for e in existing) if c is not None],
    )
    entry = credential_from(made, options=options, resident=request.resident)
    # the proof is silent (up=false): the credential was just touched into being, and the
    # signature over the origin proves the key holds it all the same (one touch, not two)
    prove_credential(session, entry, made.credential_id, origin, up=False, uv=request.verification or request.pin)
    merged = merge_credential(authfile, request.user, entry)
    written, creds = write_and_read_back(host, target, merged.text, request.user, entry)
    record_registration(host, nickname, session.aaguid, request, made.credential_id, entry)
    if target.lost_recipients:
        warnings.append(
            f"the old {target.age_file} had {target.lost_recipients} more age1… "
            "recipient(s) than given now; they can no longer decrypt it "
            "(add them with --age if they should)"
        )
    if len(creds) == 1:
        warnings.append(
            f"{request.user} has a single key: register a backup key too "
            "(a lost key would lock them out of every service using pam_u2f)"
        )
    if not existed:
        notes.append(f"created {written}")
    return RegisterResult(
        user=request.user,
        origin=origin,
        written_to=written,
        changed=merged.changed,
        already_registered=False,
        lineno=merged.lineno,
        credential=entry,
        keys_for_user=len(creds),
        nickname=nickname,
        pam_version=version,
        notes=notes + merged.notes[len(notes) :],
        warnings=warnings,
        nix=nix_snippets(request) if target.age_file is not None else {},
        pam_line=""
        if target.age_file is not None
        else pam_line_for(target, origin, pin=request.pin, verification=request.verification),
    )


def write_and_read_back(
    host: Host, target: Target, text: str, user: str, entry: U2fCredential
) -> tuple[str, list[U2fCredential]]:
    """Write the merged authfile, read it back, and check `user`'s effective line (the one
    pam_u2f reads) holds `entry`; returns where it went and that user's credentials."""
    if target.authfile is not None:
        # the touches took seconds: look again at the path now (a user may have swapped the file
        # for a link meanwhile); write_target's fd walk refuses one swapped in even later
        refuse_user_links(host, target.authfile)
    written = write_target(host, target, text)
    readable = target.authfile is not None or target.identity is not None
    readback = Authfile.parse(read_current(host, target)[0] if readable else text)
    creds = readback.credentials_of(user)
    if not any(c.identity == entry.identity for c in creds):
        raise UsageError(
            f"{written}: the new credential is not on {user}'s line after writing",
            "restore the backup under /var/backups/yktool and report this bug",
        )
    return written, creds


def record_registration(
    host: Host, nickname: str, aaguid: str, request: RegisterRequest, credential_id: bytes, entry: U2fCredential
) -> None:
    """The key registry's `pam` enrollment of a credential just written and proven."""
    target = request.target
    with Registry.update(host) as registry:
        registry.ensure_key(nickname, aaguid=aaguid)
        fields: dict[str, str | int | bool] = {
            "user": request.user,
            "origin": request.origin,
            "credential_id": base64.b64encode(credential_id).decode(),
            "cose_type": entry.cose_type,
            "options": entry.options,
            "resident": request.resident,
            # a resident entry reads `*` in the authfile: its public key is what says whose it is
            "public_key": entry.public_key,
        }
        if target.authfile is not None:
            fields["path"] = target.authfile
        else:
            fields["age_file"] = str(target.age_file)
        registry.record(nickname, "pam", **fields)
