"""Layer 4: agenix — the host's key is a recipient of its secrets in secrets.nix (per-host scoping).

secrets.nix is Nix; this reads the shapes agenix documents and the hardening checklist uses: `let` bindings of
key strings and lists of them, and `"name.age".publicKeys = [ a b ] ++ list;` entries. An
identifier it cannot resolve is reported, never guessed.
"""

from __future__ import annotations

import re
from pathlib import Path

from yktool.checks.base import CheckContext, Result, Verdict, check

HOST_KEYS = ("/etc/ssh/ssh_host_ed25519_key.pub", "/persist/etc/ssh/ssh_host_ed25519_key.pub")
_BIND_STR = re.compile(r'([A-Za-z_][\w\'-]*)\s*=\s*"([^"]*)"\s*;')
_BIND_LIST = re.compile(
    r"([A-Za-z_][\w'-]*)\s*=\s*((?:\[[^\]]*\]|[A-Za-z_][\w'-]*)(?:\s*\+\+\s*(?:\[[^\]]*\]|"
    r"[A-Za-z_][\w'-]*))*)\s*;"
)
_ENTRY = re.compile(r'"([^"]+)"\s*\.\s*publicKeys\s*=\s*([^;]*);')


def _key_id(text: str) -> str:
    """`type base64` of an OpenSSH public key line (the comment dropped)."""
    return " ".join(text.split()[:2])


def parse_secrets_nix(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """(secret name -> recipient key ids, unresolved identifiers)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())
    strings = {m.group(1): m.group(2) for m in _BIND_STR.finditer(text)}
    exprs = {m.group(1): m.group(2) for m in _BIND_LIST.finditer(text)}
    unresolved: list[str] = []

    def resolve(expr: str, depth: int = 0) -> list[str]:
        out: list[str] = []
        if depth > 20:
            return out
        for part in re.findall(r'"[^"]*"|\[[^\]]*\]|[A-Za-z_][\w\'-]*', expr):
            if part.startswith('"'):
                out.append(_key_id(part.strip('"')))
            elif part.startswith("["):
                out.extend(resolve(part[1:-1], depth + 1))
            elif part in strings:
                out.append(_key_id(strings[part]))
            elif part in exprs:
                out.extend(resolve(exprs[part], depth + 1))
            elif part not in unresolved:
                unresolved.append(part)
        return out

    entries = {m.group(1): resolve(m.group(2)) for m in _ENTRY.finditer(text)}
    return entries, unresolved


@check(
    "secrets.agenix.scoped",
    4,
    "agenix secrets scoped to this host (secrets.nix lists its key)",
    "add this host's key (ssh_host_ed25519_key.pub) to the publicKeys of its secrets in secrets.nix, "
    "then `agenix -verdict`",
)
def agenix_scoped(ctx: CheckContext, verdict: Verdict) -> Result:
    if not ctx.secrets:
        return verdict.not_applicable("no secrets.nix given (--secrets PATH)")
    path = Path(ctx.secrets)
    try:
        text = path.read_text(errors="surrogateescape")
    except FileNotFoundError:
        verdict.add_evidence(str(path), "absent")
        return verdict.fail(f"{path} does not exist")
    except OSError as exc:
        verdict.add_evidence(str(path), "unreadable", note=exc.strerror or str(exc))
        return verdict.warn(f"cannot read {path}: {exc.strerror or exc}")
    host_key, host_path = None, ""
    for p in HOST_KEYS:
        k = ctx.read(p)
        if k and k.strip():
            host_key, host_path = _key_id(k), p
            break
    if host_key is None:
        verdict.add_evidence(" / ".join(HOST_KEYS), "absent")
        return verdict.warn("this host has no ssh_host_ed25519_key.pub: cannot tell which secrets are its own")
    verdict.add_evidence(host_path, host_key[:40] + "…", "host key")
    entries, unresolved = parse_secrets_nix(text)
    if not entries:
        verdict.add_evidence(str(path), 'no `"name".publicKeys = …;` entries')
        return verdict.warn(f"{path} has no secret entries agenix would read")
    mine = sorted(name for name, keys in entries.items() if host_key in keys)
    empty = sorted(name for name, keys in entries.items() if not keys)
    verdict.add_evidence(str(path), f"{len(mine)} of {len(entries)} secrets", "for this host")
    if unresolved:
        verdict.add_evidence(str(path), ", ".join(unresolved[:5]), "unresolved names")
    if empty:
        verdict.add_evidence(str(path), ", ".join(empty[:5]), "no recipients")
        return verdict.fail(f"secrets with no recipient: {', '.join(empty[:5])}")
    if not mine:
        return verdict.fail("this host's key is a recipient of no secret: it can decrypt none at boot")
    return verdict.ok()
