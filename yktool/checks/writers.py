"""Who besides root can change a configuration: its files, the folders on their paths, the links on the way.

Whoever can rewrite /etc/pam.d/sudo or sshd_config decides what they say, so a check that judges
their content first asks this. For every name Host's fd walk meets on the way to a file that was
read (the root, each folder, each link followed and then where its target leads, the file
itself), it reports a non-root owner, or write access for others or for a group other than
root's (gid 0). A folder's sticky bit keeps others from renaming or removing root's entries
(NixOS's /nix/store is 1775 root:nixbld), so a sticky folder counts only through its owner.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from yktool.checks.base import CheckContext, Result, Unreadable, Verdict
from yktool.errors import YktoolError


@dataclass(frozen=True)
class Writer:
    """One name a user other than root can change, and how it was reached."""

    path: str  # inside the root, no link left in it (a link itself: the link's own path)
    who: str  # "uid 1000 (alice) owns it", "group 1000 (alice) may write it", …
    mode: str  # "owner alice (uid 1000), mode 0644"
    via_link: str = ""  # the link the walk followed to get here ("" when reached directly)

    @property
    def fix(self) -> str:
        return f"chown root:root {self.path}; chmod go-w {self.path}"


def _named(number: int, names: dict[int, str]) -> str:
    return f"{number} ({names[number]})" if number in names else str(number)


def _names(ctx: CheckContext, table: str) -> dict[int, str]:
    try:
        text = ctx.read(table) or ""
    except (YktoolError, Unreadable):  # names are only for the message; a number will do
        text = ""
    out: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(int(parts[2]), parts[0])
    return out


def _builders(ctx: CheckContext) -> tuple[int | None, int | None]:
    """An offline tree checked unprivileged is the builder's own (every file theirs): their uid
    and gid say nothing about the machine it becomes, so they are not reported."""
    if ctx.live or os.geteuid() == 0:
        return None, None
    return os.geteuid(), os.getegid()


def _judge(
    st: os.stat_result, users: dict[int, str], groups: dict[int, str], builder: tuple[int | None, int | None]
) -> str | None:
    uid, gid = builder
    if st.st_uid != 0 and st.st_uid != uid:
        return f"uid {_named(st.st_uid, users)} owns it"
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's own mode is always 0777 and means nothing
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None  # sticky: only root renames or removes root's entries
    if st.st_mode & 0o002:
        return "every user may write it"
    if st.st_mode & 0o020 and st.st_gid not in (0, gid):
        return f"group {_named(st.st_gid, groups)} may write it"
    return None


def writers(ctx: CheckContext, paths: list[str]) -> list[Writer]:
    """Every name on the way to `paths` (files the reader read, folders it listed) that a user
    other than root can change; [] when only root can. Cached per path on the context."""
    users, groups = _names(ctx, "/etc/passwd"), _names(ctx, "/etc/group")
    builder = _builders(ctx)
    found: dict[str, Writer] = {}
    for path in dict.fromkeys(paths):
        key = "writers:" + path
        hit = ctx._cache.get(key)
        cached: list[Writer] = hit if isinstance(hit, list) else []
        if not isinstance(hit, list):
            try:
                trail = ctx.host.trail(path)
            except (OSError, YktoolError):
                trail = []  # gone or refused since it was read: the reader said so already
            via = ""
            for inside, st in trail:
                who = _judge(st, users, groups, builder)
                if who is not None:
                    owner = users.get(st.st_uid, str(st.st_uid))
                    cached.append(
                        Writer(
                            str(inside),
                            who,
                            f"owner {owner} (uid {st.st_uid}), group {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}",
                            via,
                        )
                    )
                if stat.S_ISLNK(st.st_mode):
                    via = str(inside)
            ctx._cache[key] = cached
        for w in cached:
            found.setdefault(w.path, w)
    return list(found.values())


def refuse_writable(ctx: CheckContext, verdict: Verdict, what: str, paths: list[str]) -> Result | None:
    """A fail naming who besides root can change `what`'s files (evidence: each name, its owner
    and mode), or None when only root can."""
    found = writers(ctx, paths)
    if not found:
        return None
    for w in found:
        verdict.add_evidence(w.path, w.mode, "writable", w.who + (f" (through {w.via_link})" if w.via_link else ""))
    first = found[0]
    through = f" (reached through the link {first.via_link})" if first.via_link else ""
    fix = "; ".join(dict.fromkeys(w.fix for w in found))
    links = list(dict.fromkeys(w.via_link for w in found if w.via_link))
    if links:
        fix = f"replace the link {', '.join(links)} with a root-owned file (review its content first), or: {fix}"
    return verdict.fail(
        f"{first.path}{through}: {first.who}, so not root alone decides {what} (whoever can "
        "write the config can turn the key off)",
        fix,
    )
