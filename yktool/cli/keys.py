"""`yktool keys …`: the key registry (/etc/yktool/keys.toml under --root)."""

from __future__ import annotations

import click

from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit

# Fields shown first on an enrollment line; the rest follow as key=value.
_LEAD = ("kind", "credential_id")


@click.group("keys")
def keys() -> None:
    """The key registry: which key (by nickname) was enrolled into what.

    \b
    Examples:
      yktool keys list
    """


def _enrollment_line(entry: dict[str, str | int | bool]) -> str:
    kind = str(entry.get("kind", "?"))
    rest = [f"{k}={v}" for k, v in entry.items() if k not in _LEAD]
    cred = entry.get("credential_id")
    if cred:
        short = str(cred)
        rest.insert(0, f"credential {short[:16]}…" if len(short) > 16 else f"credential {short}")
    return f"    {kind:<9} " + "  ".join(rest)


@read_only
@keys.command("list", short_help="Registered keys and their enrollments.")
@pass_app
def list_cmd(app: AppContext) -> None:
    """List the registered keys: nickname, AAGUID, serial, when added, and each enrollment.

    \b
    Examples:
      yktool keys list
      yktool --root /mnt keys list --json
    """
    from yktool.inventory import REGISTRY_PATH, Registry

    registry = Registry.load(app.host)
    data = {
        "registry": REGISTRY_PATH,
        "keys": [
            {
                "nickname": k.nickname,
                "aaguid": k.aaguid,
                "serial": k.serial,
                "added": k.added,
                "enrollments": [dict(e) for e in k.enrollments],
            }
            for k in registry.keys
        ],
    }
    if not registry.keys:
        text = (
            f"no keys registered yet ({REGISTRY_PATH} under {app.host.root} is absent or empty); "
            "enrollments record their key there"
        )
        emit(app.json, data, text)
        return
    lines = []
    for k in registry.keys:
        serial = f"  serial {k.serial}" if k.serial is not None else ""
        aaguid = k.aaguid or "AAGUID unknown"
        lines.append(f"{k.nickname}  {aaguid}{serial}  added {k.added or '?'}")
        if not k.enrollments:
            lines.append("    (no enrollments)")
        lines.extend(_enrollment_line(e) for e in k.enrollments)
    emit(app.json, data, "\n".join(lines))
