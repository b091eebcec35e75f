"""Touches, PIN entries and wall time per flow: `yktool commission` (the demo set-up: two
software keys, a swtpm, a LUKS2 image, a scratch root) and `yktool replace` (lose the primary,
keep the backup, enroll a new key), each run as the CLI runs (a fresh interpreter, --json).

    .venv/bin/python benchmarks/flows_bench.py [--keep DIR]

Goal: one PIN entry per key per run; touches at the physical minimum, one makeCredential per
credential (per key: LUKS2 FIDO2 1, SSH 1, pam_u2f 1). The LUKS slot's hmac-secret and the
pam_u2f proof are read with silent (up=false) assertions: hmac-secret depends on UV, not UP.
Probing in replace is silent (0 touches, 0 PINs on the keys that stay). The systemd backend
(real keys) is systemd-cryptenroll's own count (its enrollment asks for two touches). Everything is
written under a temporary folder (or --keep DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EXPECTED_TOUCHES = {"luks-fido2": 1, "ssh": 1, "pam": 1}
EXPECTED_PIN_ENTRIES = 1


def yktool(*args: str, stdin: str = "") -> tuple[dict[str, object], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [str(REPO / ".venv/bin/yktool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("YKTOOL_")},
        timeout=300,
        check=False,
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"yktool {' '.join(args[:8])} … failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it")
    opts = parser.parse_args()
    from tests.flows_support import fresh_setup  # the tests' own set-up: no second copy of it
    from yktool.demo import IMAGE, PASSPHRASE, ROOT, VERIFY_ITEMS

    with tempfile.TemporaryDirectory(prefix="yktool-flows-bench-") as tmp:
        base = opts.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        with fresh_setup(base) as (scratch, tcti):
            root = str(scratch / ROOT)
            keys = scratch / "keys"
            pin = "2468"
            report, took = yktool(
                "--root",
                root,
                "--tpm",
                tcti,
                "--device",
                f"sim:{keys}/primary.json",
                "--yes",
                "--json",
                "commission",
                "--kind",
                "linux",
                "--user",
                "alice",
                "--luks-device",
                str(IMAGE),
                "--git-email",
                "alice@demo-host.example",
                "--pam-origin",
                "pam://demo-host",
                "--backup-device",
                f"sim:{keys}/backup.json",
                "--unlock-key-file",
                str(PASSPHRASE),
                "--recovery-key-file",
                str(scratch / "recovery.txt"),
                "--new-pin-stdin",
                "--verify-only",
                ",".join(VERIFY_ITEMS),
                stdin=f"{pin}\n{pin}\n",
            )
            counts = report["counts"]
            assert isinstance(counts, dict)
            print(f"commission: {took:.2f} s wall, verify ok: {report['ok']}")
            for role, c in counts.items():
                print(
                    f"  {role:<8} touches {c['touches']:>2} (minimum {sum(EXPECTED_TOUCHES.values())}), "
                    f"PIN entries {c['pin_prompts']} (goal {EXPECTED_PIN_ENTRIES})"
                )
            (keys / "primary.json").unlink()
            report, took = yktool(
                "--root",
                root,
                "--device",
                f"sim:{keys}/backup.json",
                "--yes",
                "--json",
                "replace",
                "--lost",
                "primary",
                "--new-device",
                f"sim:{keys}/new.json",
                "--unlock-key-file",
                str(PASSPHRASE),
                "--new-pin-stdin",
                stdin=f"{pin}\n",
            )
            counts = report["counts"]
            assert isinstance(counts, dict)
            lost = report["lost"]
            assert isinstance(lost, list)
            print(f"replace:    {took:.2f} s wall, {len(lost)} credentials of the lost key found and revoked")
            for role, c in counts.items():
                label = "new key" if role == "new" else f"{role} (kept)"
                goal = (
                    f"goal {sum(EXPECTED_TOUCHES.values())} touches, {EXPECTED_PIN_ENTRIES} PIN"
                    if role == "new"
                    else "goal 0: probes are silent"
                )
                print(f"  {label:<16} touches {c['touches']:>2}, PIN entries {c['pin_prompts']} ({goal})")


if __name__ == "__main__":
    main()
