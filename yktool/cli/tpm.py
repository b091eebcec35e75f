"""`yktool tpm …`: is there a TPM2, what is in its PCRs, is Secure Boot on."""

from __future__ import annotations

import click

from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit


@click.group("tpm")
def tpm() -> None:
    """TPM2 presence, PCR banks and values, Secure Boot state.

    \b
    Examples:
      yktool tpm status
    """


@read_only
@tpm.command("status")
@click.option("--pcrs", default="0+7", show_default=True, help="PCRs to show, e.g. 0+2+7.")
@click.option("--bank", default="sha256", show_default=True, help="PCR bank to read.")
@pass_app
def status(app: AppContext, pcrs: str, bank: str) -> None:
    """Show the TPM at --tpm: maker, firmware, PCR banks, PCR values, Secure Boot.

    PCR 7 all zero means the boot was not measured (no UEFI measured boot): a TPM2 seal would
    then protect nothing. Secure Boot is read from efivars under --root. Exit 3 when there is no
    TPM at the TCTI.

    \b
    Examples:
      yktool tpm status
      yktool --tpm swtpm:host=127.0.0.1,port=2321 tpm status --pcrs 0+2+7
      yktool tpm status --bank sha1 --json
    """
    from yktool.tpm import parse_pcrs, parse_tcti, read_info, secure_boot

    selection = parse_pcrs(pcrs)
    tcti = parse_tcti(app.tpm)
    info = read_info(tcti, selection, bank)
    info.secure_boot = secure_boot(app.host)
    lines = [
        f"TPM2 at {info.tcti}: present",
        f"  manufacturer   {info.manufacturer}" + (f" ({info.vendor})" if info.vendor else ""),
        f"  firmware       {info.firmware}",
        f"  spec revision  {info.spec_revision}",
        f"  PCR banks      {', '.join(info.banks)}",
    ]
    for pcr, value in sorted(info.pcrs.items()):
        note = "  (all zero: nothing measured)" if not any(value) else ""
        lines.append(f"  PCR {pcr:<2} {bank:<7} {value.hex()}{note}")
    if info.pcr7_unmeasured:
        lines.append("  PCR 7 is all zero: this boot was not measured; TPM2 enrollment would bind to nothing")
    lines.append(f"  Secure Boot    {info.secure_boot.text}")
    emit(app.json, info.to_json(), "\n".join(lines))
