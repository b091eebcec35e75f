"""`yktool verify`: every check passes on the hardened fixture root and misses on its mutation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.roots import MUTATIONS, FixtureRoot
from yktool.checks import REGISTRY, CheckContext, Result, run_checks
from yktool.host import Host


def results_of(fx: FixtureRoot) -> dict[str, Result]:
    ctx = CheckContext(Host(fx.root), secrets=str(fx.secrets))
    return {r.id: r for r in run_checks(ctx)}


def describe(results: dict[str, Result]) -> str:
    return "\n".join(
        f"{r.status} {r.id}: {r.reason} {[e.render() for e in r.evidence]}"
        for r in results.values()
        if r.status != "pass"
    )


def test_as_many_checks_as_the_page_has_items_and_each_has_a_mutation() -> None:
    # page: 11 checklist items + 13 sysctls + 7 modules + 6 sshd settings = 37 items
    assert len(REGISTRY) >= 37
    assert set(MUTATIONS) == set(REGISTRY), set(REGISTRY) ^ set(MUTATIONS)
    assert {c.layer for c in REGISTRY.values()} == set(range(8))


def test_hardened_root_passes_every_check(hardened_root: FixtureRoot) -> None:
    results = results_of(hardened_root)
    assert all(r.status == "pass" for r in results.values()), describe(results)


@pytest.mark.parametrize("check_id", sorted(REGISTRY))
def test_each_check_misses_on_its_mutated_root(hardened_root: FixtureRoot, check_id: str) -> None:
    mutation = MUTATIONS[check_id]
    mutation.apply(hardened_root)
    results = results_of(hardened_root)
    target = results[check_id]
    assert target.status == mutation.status, describe(results)
    evidence = " | ".join(e.render() for e in target.evidence)
    assert mutation.evidence in evidence, evidence
    assert any(e.source.startswith("/") or " " in e.source for e in target.evidence), evidence
    assert target.fix, "a miss must say how to fix it"
    # exactly this check misses; checks that depend on it may only become n/a
    others = {i: r.status for i, r in results.items() if i != check_id and r.status in ("fail", "warn")}
    assert not others, describe(results)


def test_luks_root_mutation_turns_token_checks_not_applicable(hardened_root: FixtureRoot) -> None:
    MUTATIONS["boot.luks.root"].apply(hardened_root)
    results = results_of(hardened_root)
    assert [results[i].status for i in ("boot.luks.fido2", "boot.luks.tpm2", "boot.luks.tpm2_pcrs")] == ["n/a"] * 3


def test_loaded_module_fails_even_when_blacklisted(hardened_root: FixtureRoot) -> None:
    modules = hardened_root.root / "proc/modules"
    modules.write_text(modules.read_text() + "sctp 434176 2 - Live 0x0\n")
    r = results_of(hardened_root)["kernel.module.sctp"]
    assert r.status == "fail" and "sctp is loaded" in r.reason
    assert "/proc/modules: sctp=loaded" in [e.render() for e in r.evidence]


def test_sysctl_falls_back_to_sysctl_d_without_proc(hardened_root: FixtureRoot) -> None:
    import shutil

    shutil.rmtree(hardened_root.root / "proc")
    results = results_of(hardened_root)
    r = results["sysctl.kernel.kptr_restrict"]
    assert r.status == "pass"
    assert any(e.source == "/etc/sysctl.d/90-hardening.conf" and e.value == "2" for e in r.evidence)
    # a wrong value in sysctl.d is a fail naming that file
    conf = hardened_root.root / "etc/sysctl.d/90-hardening.conf"
    conf.write_text(conf.read_text().replace("kernel.dmesg_restrict = 1", "kernel.dmesg_restrict = 0"))
    r2 = results_of(hardened_root)["sysctl.kernel.dmesg_restrict"]
    assert r2.status == "fail" and "/etc/sysctl.d/90-hardening.conf sets kernel.dmesg_restrict = 0" in r2.reason


def test_tpm2_pcrs_follow_the_configured_set(hardened_root: FixtureRoot) -> None:
    # the fixture token is bound to 0+7: asking for 0+7 passes, asking for 7+11 does not
    ctx = CheckContext(Host(hardened_root.root), tpm2_pcrs=(0, 7))
    assert [r.status for r in run_checks(ctx, only=["boot.luks.tpm2_pcrs"])] == ["pass"]
    ctx = CheckContext(Host(hardened_root.root), tpm2_pcrs=(7, 11))
    assert [r.status for r in run_checks(ctx, only=["boot.luks.tpm2_pcrs"])] == ["fail"]


def test_pam_sufficient_is_a_warning_not_a_pass(hardened_root: FixtureRoot) -> None:
    sudo = hardened_root.root / "etc/pam.d/sudo"
    sudo.write_text(sudo.read_text().replace("auth required pam_u2f.so", "auth sufficient pam_u2f.so"))
    r = results_of(hardened_root)["pam.sudo"]
    assert r.status == "warn" and "password alone still works" in r.reason


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        ("auth required pam_u2f.so cue nouserok authfile=/etc/u2f_mappings", "fail", "`nouserok`"),
        ("auth required pam_u2f.so cue alwaysok authfile=/etc/u2f_mappings", "fail", "`alwaysok`"),
        ("auth required pam_u2f.so cue authfile=/etc/missing", "fail", "no credential in /etc/missing"),
        (
            "auth [success=done default=ignore] pam_u2f.so cue authfile=/etc/u2f_mappings",
            "warn",
            "a failed touch does not fail sudo",
        ),
        (
            "auth [success=2 default=ignore] pam_u2f.so cue authfile=/etc/u2f_mappings",
            "warn",
            "a failed touch does not fail sudo",
        ),
        ("auth [success=ok default=die] pam_u2f.so cue authfile=/etc/u2f_mappings", "pass", ""),
        ("auth required pam_u2f.so cue authfile=/run/agenix/yubikey-auth", "pass", ""),
    ],
)
def test_pam_rule_that_lets_someone_past_the_key_is_not_a_pass(
    hardened_root: FixtureRoot, line: str, status: str, reason: str
) -> None:
    (hardened_root.root / "etc/pam.d/sudo").write_text(f"{line}\n@include common-auth\n")
    r = results_of(hardened_root)["pam.sudo"]
    assert r.status == status and reason in r.reason, describe({r.id: r})


def test_pam_authfile_without_alice_credentials_fails(hardened_root: FixtureRoot) -> None:
    (hardened_root.root / "etc/u2f_mappings").write_text("alice\n")  # a line with no credential
    r = results_of(hardened_root)["pam.sudo"]
    assert r.status == "fail" and "/etc/u2f_mappings: authfile=alice: 0 keys" in [e.render() for e in r.evidence]


def test_match_block_loosening_a_setting_fails(hardened_root: FixtureRoot) -> None:
    cfg = hardened_root.root / "etc/ssh/sshd_config"
    cfg.write_text(cfg.read_text() + "Match Address 10.0.0.0/8\n    PasswordAuthentication yes\n")
    r = results_of(hardened_root)["ssh.passwordauthentication"]
    assert r.status == "fail" and "Match" in r.reason
    assert "/etc/ssh/sshd_config:12: PasswordAuthentication=yes (Match Address 10.0.0.0/8)" in [
        e.render() for e in r.evidence
    ]


def test_nixos_lock_rule_with_store_program(hardened_root: FixtureRoot) -> None:
    from yktool import udev

    root = hardened_root.root
    (root / "etc/udev/rules.d/85-yktool-lock.rules").unlink()
    store_prog = "/nix/store/" + "c" * 32 + "-yktool-lock"
    key = udev.KeyUsb(udev.SOFTKEY_VENDOR, udev.SOFTKEY_PRODUCT, "SK0001FIXTURE", udev.SOFTKEY_NAME)
    # NixOS puts services.udev.extraRules into 99-local.rules
    (root / "etc/udev/rules.d/99-local.rules").write_text(udev.render_rule(key, "primary", program=store_prog))
    (root / store_prog.lstrip("/")).write_text(udev.lock_program())
    assert results_of(hardened_root)["hw.udev.lock_rule"].status == "pass"
    (root / store_prog.lstrip("/")).unlink()
    r = results_of(hardened_root)["hw.udev.lock_rule"]
    assert r.status == "fail" and f"{store_prog}: absent" in [e.render().split(" (")[0] for e in r.evidence]


def test_git_signing_key_named_by_file(hardened_root: FixtureRoot) -> None:
    cfg = hardened_root.root / "home/alice/.gitconfig"
    text = cfg.read_text()
    start = text.index("signingkey = ") + len("signingkey = ")
    end = text.index("\n", start)
    cfg.write_text(text[:start] + "~/.ssh/id_ed25519_sk" + text[end:])  # git accepts the private key's path too
    r = results_of(hardened_root)["git.signing"]
    assert r.status == "pass", describe({r.id: r})
    (hardened_root.root / "home/alice/.ssh/id_ed25519_sk.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlainSoftwareKey alice\n"
    )
    r = results_of(hardened_root)["git.signing"]
    assert r.status == "fail"
    assert "/home/alice/.gitconfig: user.signingkey=~/.ssh/id_ed25519_sk (not a security-key key)" in [
        e.render() for e in r.evidence
    ]


def test_iptables_input_filtering_through_user_chains() -> None:
    from yktool.checks.network import ipt_filters_input

    nixos = (
        "*filter\n:INPUT ACCEPT [0:0]\n:nixos-fw - [0:0]\n:nixos-fw-refuse - [0:0]\n"
        "-A INPUT -j nixos-fw\n-A nixos-fw -i lo -j nixos-fw-accept\n-A nixos-fw -p tcp --dport 22 -j ACCEPT\n"
        "-A nixos-fw -j nixos-fw-refuse\n-A nixos-fw-refuse -j DROP\nCOMMIT\n"
    )
    assert ipt_filters_input(nixos) == (
        "-A INPUT -j nixos-fw -> -A nixos-fw -j nixos-fw-refuse -> -A nixos-fw-refuse -j DROP"
    )
    assert ipt_filters_input("*filter\n:INPUT DROP [0:0]\nCOMMIT\n") == ":INPUT DROP"
    assert ipt_filters_input("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n") is None
    assert ipt_filters_input("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j loop\n-A loop -j INPUT\nCOMMIT\n") is None


def test_nft_input_filtering() -> None:
    from tests.fixtures.roots import NFT_GOOD
    from yktool.checks.network import nft_filters_input

    assert nft_filters_input(NFT_GOOD) is not None
    assert nft_filters_input(NFT_GOOD.replace("policy drop", "policy accept")) is None
    ends_in_drop = NFT_GOOD.replace("policy drop", "policy accept").replace(
        "tcp dport 22 accept", "tcp dport 22 accept\n        drop"
    )
    assert nft_filters_input(ends_in_drop) == "drop"


def test_nixos_per_user_locker_counts(hardened_root: FixtureRoot) -> None:
    (hardened_root.root / "usr/bin/hyprlock").unlink()
    per_user = hardened_root.root / "etc/profiles/per-user/alice/bin"
    per_user.mkdir(parents=True)
    (per_user / "swaylock").write_text("#!/bin/sh\n")
    r = results_of(hardened_root)["hw.udev.lock_handler"]
    assert r.status == "pass" and "/etc/profiles/per-user/alice/bin/swaylock: present" in [
        e.render() for e in r.evidence
    ]


LIVE_FIREWALL = """
import json, subprocess, sys
from pathlib import Path
from yktool.checks import CheckContext, run_checks
from yktool.host import Host

class LiveHost(Host):  # the fixture root's files, but the kernel (this namespace's) is live
    @property
    def is_live(self) -> bool:
        return True

subprocess.run(["nft", "-f", sys.argv[2]], check=True)
[r] = run_checks(CheckContext(LiveHost(Path(sys.argv[1])), privileged=True), only=["net.firewall"])
print(json.dumps({"status": r.status, "reason": r.reason, "evidence": [e.render() for e in r.evidence]}))
"""


@pytest.mark.skipif(not shutil.which("nft") or not shutil.which("unshare"), reason="needs nft and unshare")
def test_live_ruleset_that_drops_nothing_fails_whatever_the_config_says(
    hardened_root: FixtureRoot, tmp_path: Path
) -> None:
    """The real nft, in a private network namespace made for the test (this machine's own
    ruleset is never touched). The fixture's /etc/nftables.conf drops input and its service is
    enabled, but what the running kernel does is the answer (a failed nftables.service leaves
    it wide open)."""
    import json
    import subprocess
    import sys

    def live(policy: str) -> dict[str, object]:
        rules = tmp_path / f"{policy}.nft"
        rules.write_text(
            f"table inet filter {{\n  chain input {{ type filter hook input priority 0; policy {policy}; }}\n}}\n"
        )
        out = subprocess.run(
            ["unshare", "-n", sys.executable, "-c", LIVE_FIREWALL, str(hardened_root.root), str(rules)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert out.returncode == 0, out.stderr
        result: dict[str, object] = json.loads(out.stdout)
        return result

    accept = live("accept")
    assert accept["status"] == "fail" and "running kernel" in str(accept["reason"]), accept
    evidence = accept["evidence"]
    assert isinstance(evidence, list) and "nft list ruleset: input=no input filtering" in evidence
    assert live("drop")["status"] == "pass"


def test_lock_rule_masked_by_a_same_named_file_in_etc_is_not_installed(hardened_root: FixtureRoot) -> None:
    root = hardened_root.root
    vendor_dir = root / "usr/lib/udev/rules.d"
    vendor_dir.mkdir(parents=True)
    (root / "etc/udev/rules.d/85-yktool-lock.rules").rename(vendor_dir / "85-yktool-lock.rules")
    assert results_of(hardened_root)["hw.udev.lock_rule"].status == "pass"
    (root / "etc/udev/rules.d/85-yktool-lock.rules").symlink_to("/dev/null")  # how udev rules are masked
    r = results_of(hardened_root)["hw.udev.lock_rule"]
    assert r.status == "fail", describe({r.id: r})


def test_commented_out_sk_key_is_no_key(hardened_root: FixtureRoot) -> None:
    from tests.fixtures.roots import sk_pubkey

    ssh = hardened_root.root / "home/alice/.ssh"
    (ssh / "id_ed25519_sk.pub").unlink()
    (ssh / "authorized_keys").write_text("# " + sk_pubkey() + "\n")
    assert results_of(hardened_root)["ssh.sk_key"].status == "fail"
    (ssh / "authorized_keys").write_text("no-touch-required " + sk_pubkey() + "\n")
    assert results_of(hardened_root)["ssh.sk_key"].status == "pass"


def test_pam_u2f_module_not_installed_fails(hardened_root: FixtureRoot) -> None:
    (hardened_root.root / "usr/lib/x86_64-linux-gnu/security/pam_u2f.so").unlink()
    r = results_of(hardened_root)["pam.sudo"]
    assert r.status == "fail" and "not installed: every sudo authentication fails" in r.reason
    sudo = hardened_root.root / "etc/pam.d/sudo"
    sudo.write_text("-" + sudo.read_text().removeprefix("#%PAM-1.0\n"))
    r = results_of(hardened_root)["pam.sudo"]
    # `-` only silences libpam's log: the rule still runs and answers MODULE_UNKNOWN (pamtester agrees)
    assert r.status == "fail" and "answers MODULE_UNKNOWN" in r.reason, describe({r.id: r})
    # a tree that holds no PAM module at all is configuration only: no verdict on modules
    shutil.rmtree(hardened_root.root / "usr/lib/x86_64-linux-gnu/security")
    assert results_of(hardened_root)["pam.sudo"].status == "pass"
    # NixOS names the module by its store path
    module = f"/nix/store/{'c' * 32}-pam_u2f-1.3.1/lib/security/pam_u2f.so"
    sudo.write_text(f"auth required {module} cue authfile=/etc/u2f_mappings\n")
    assert results_of(hardened_root)["pam.sudo"].status == "fail"
    (hardened_root.root / module.lstrip("/")).parent.mkdir(parents=True)
    (hardened_root.root / module.lstrip("/")).write_bytes(b"\x7fELF")
    assert results_of(hardened_root)["pam.sudo"].status == "pass"


def test_locker_cannot_read_a_root_only_authfile(hardened_root: FixtureRoot) -> None:
    (hardened_root.root / "etc/u2f_mappings").chmod(0o600)
    results = results_of(hardened_root)
    assert results["pam.hyprlock"].status == "fail" and "never unlocks" in results["pam.hyprlock"].reason
    assert "/etc/u2f_mappings: mode=0600" in [e.render() for e in results["pam.hyprlock"].evidence]
    assert results["pam.sudo"].status == "pass"  # sudo's pam_u2f runs as root


def test_pam_expand_authfile_per_user(hardened_root: FixtureRoot) -> None:
    root = hardened_root.root
    (root / "etc/u2f").mkdir()
    (root / "etc/u2f_mappings").rename(root / "etc/u2f/alice")
    sudo = root / "etc/pam.d/sudo"
    sudo.write_text(sudo.read_text().replace("authfile=/etc/u2f_mappings", "authfile=/etc/u2f/%u expand"))
    r = results_of(hardened_root)["pam.sudo"]
    assert r.status == "pass" and "/etc/u2f/alice: authfile=alice: 2 keys" in [e.render() for e in r.evidence]
    sudo.write_text(sudo.read_text().replace(" expand", ""))  # without expand, %u is taken literally
    assert results_of(hardened_root)["pam.sudo"].status == "fail"


def test_mutable_users_from_configuration_nix_ignores_comments(hardened_root: FixtureRoot) -> None:
    (hardened_root.root / "run/current-system").unlink()  # no activation script to read
    conf = hardened_root.root / "etc/nixos/configuration.nix"
    conf.parent.mkdir(parents=True)
    conf.write_text("{ ... }: {\n  # users.mutableUsers = false;\n  users.mutableUsers = true;\n}\n")
    assert results_of(hardened_root)["nixos.mutable_users"].status == "fail"
    conf.write_text("{ ... }: {\n  # users.mutableUsers = false;\n}\n")
    assert results_of(hardened_root)["nixos.mutable_users"].status == "warn"
    conf.write_text("{ ... }: {\n  users.mutableUsers = false; # accounts from here only\n}\n")
    assert results_of(hardened_root)["nixos.mutable_users"].status == "pass"


@pytest.mark.parametrize(
    ("before", "status", "reason"),
    [
        ("auth sufficient pam_unix.so", "warn", "can end sudo's authentication before pam_u2f"),
        # a jump over the last rule ends the stack with nothing positive: libpam denies (pamtester agrees)
        ("auth [success=1 default=ignore] pam_unix.so", "pass", ""),
        (
            "auth [success=1 default=ignore] pam_unix.so\n@AFTER auth required pam_permit.so",
            "warn",
            "can end sudo's authentication before pam_u2f",
        ),
        ("auth sufficient pam_permit.so", "fail", "anyone gets in"),
        ("auth SUFFICIENT pam_permit.so", "fail", "anyone gets in"),
        ("auth [success=done default=ignore] pam_permit.so", "fail", "anyone gets in"),
        # libpam reads `DONE` as a syntax error: every result is bad, even pam_permit's success: nobody
        # gets in, with the key or without (pamtester agrees)
        ("auth [success=DONE default=ignore] pam_permit.so", "fail", "everyone is locked out"),
        # `reset` forgets pam_u2f's failure (pamtester agrees)
        (
            "auth required pam_permit.so\n@AFTER auth [default=reset] pam_deny.so\nauth required pam_permit.so",
            "fail",
            "anyone gets in",
        ),
        ("auth required pam_unix.so", "pass", ""),
        ("auth [success=1 default=ignore] pam_unix.so\nauth requisite pam_deny.so", "pass", ""),
    ],
)
def test_a_rule_before_pam_u2f_that_ends_the_stack(
    hardened_root: FixtureRoot, before: str, status: str, reason: str
) -> None:
    from tests.fixtures.roots import PAM_U2F

    before, _, after = before.partition("\n@AFTER ")
    (hardened_root.root / "etc/pam.d/sudo").write_text(f"{before}\n{PAM_U2F}{after}\n")
    r = results_of(hardened_root)["pam.sudo"]
    assert r.status == status and reason in r.reason, describe({r.id: r})
