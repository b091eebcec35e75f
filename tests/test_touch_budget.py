"""The physical minimum per key: 3 touches (one makeCredential per credential: LUKS2 FIDO2, SSH,
pam_u2f) and 1 PIN entry, in `commission` (both keys) and in `replace` (the new key).

Touches are counted by the software key itself (its presence callback: one call per touch it
asked for), not by yktool's own bookkeeping; PIN entries by what stdin holds (one line per key:
a second prompt would find nothing and fail) and by the report. After the run the real
consumers still prove every credential the budget covers: cryptsetup opens the slot with the
key's hmac-secret, the real pam_u2f (pamtester) accepts the key, ssh-keygen verifies its
signature."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import (
    EMAIL,
    ORIGIN,
    fresh_setup,
    key_opens_image,
    pam_accepts,
    spec,
    ssh_signs,
)
from yktool.demo import IMAGE, KEYS, PASSPHRASE, ROOT, VERIFY_ITEMS
from yktool.fido.softkey import Presence, SoftKey

PIN = "2468"
TOUCHES_PER_KEY = 3


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Touches per software-key file, as the software key counts them."""
    from yktool.fido import devices

    real_open = devices.open_sim
    touches: Counter[str] = Counter()

    def open_counting(path: str | Path, presence: Presence | None = None, *, create: bool = True) -> SoftKey:
        name = Path(path).stem

        def touch() -> bool:
            touches[name] += 1
            return True

        return real_open(path, presence or touch, create=create)

    monkeypatch.setattr(devices, "open_sim", open_counting)
    return touches


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with fresh_setup(tmp_path) as setup:
        yield setup


def test_commission_costs_each_key_three_touches_and_one_pin(
    fresh: tuple[Path, str], cli: CliCall, counted: Counter[str], tmp_path: Path
) -> None:
    scratch, tcti = fresh
    r = cli(
        "--root",
        scratch / ROOT,
        "--tpm",
        tcti,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "--json",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--luks-device",
        IMAGE,
        "--git-email",
        EMAIL,
        "--pam-origin",
        ORIGIN,
        "--backup-device",
        spec(scratch, "backup"),
        "--unlock-key-file",
        PASSPHRASE,
        "--recovery-key-file",
        scratch / "recovery.txt",
        "--new-pin-stdin",
        "--verify-only",
        ",".join(VERIFY_ITEMS),
        input=f"{PIN}\n{PIN}\n",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert counted == {"primary": TOUCHES_PER_KEY, "backup": TOUCHES_PER_KEY}
    assert report["counts"] == {role: {"touches": TOUCHES_PER_KEY, "pin_prompts": 1} for role in ("primary", "backup")}
    # nothing weaker: each consumer proves each key's credential
    for role, key_file in (("primary", "id_ed25519_sk"), ("backup", "id_ed25519_sk_backup")):
        assert key_opens_image(scratch, spec(scratch, role), PIN), role
        (tmp_path / role).mkdir()
        assert pam_accepts(scratch, spec(scratch, role), tmp_path / role), role
        signed = ssh_signs(scratch, f"/home/alice/.ssh/{key_file}", spec(scratch, role), PIN, tmp_path / role)
        assert signed.returncode == 0, signed.stderr


def test_replace_costs_the_new_key_three_touches_and_one_pin(
    fresh: tuple[Path, str], cli: CliCall, counted: Counter[str], tmp_path: Path
) -> None:
    scratch, tcti = fresh
    r = cli(
        "--root",
        scratch / ROOT,
        "--tpm",
        tcti,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--luks-device",
        IMAGE,
        "--git-email",
        EMAIL,
        "--pam-origin",
        ORIGIN,
        "--backup-device",
        spec(scratch, "backup"),
        "--unlock-key-file",
        PASSPHRASE,
        "--recovery-key-file",
        scratch / "recovery.txt",
        "--new-pin-stdin",
        "--verify-only",
        ",".join(VERIFY_ITEMS),
        input=f"{PIN}\n{PIN}\n",
    )
    assert r.exit_code == 0, r.output
    (scratch / KEYS / "primary.json").unlink()  # lost
    counted.clear()
    r = cli(
        "--root",
        scratch / ROOT,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "--json",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        PASSPHRASE,
        "--new-pin-stdin",
        input=f"{PIN}\n",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert counted == {"new": TOUCHES_PER_KEY}  # the kept key is probed silently
    assert report["counts"]["new"] == {"touches": TOUCHES_PER_KEY, "pin_prompts": 1}
    assert key_opens_image(scratch, spec(scratch, "new"), PIN)
    assert pam_accepts(scratch, spec(scratch, "new"), tmp_path)
    # the new key takes the lost primary's place (~/.ssh/id_ed25519_sk)
    signed = ssh_signs(scratch, "/home/alice/.ssh/id_ed25519_sk", spec(scratch, "new"), PIN, tmp_path)
    assert signed.returncode == 0, signed.stderr
