"""verify's reading of PAM stacks against the real libpam (pamtester in a private mount namespace).

Hypothesis writes auth stacks — a service and files it pulls in with include, substack and
@include; types and controls in any case, bracketed controls (some that libpam cannot parse),
bad types, missing modules and files, `-auth`, continuation lines and comments — out of modules
whose result is fixed: pam_permit, pam_deny, pam_u2f with no key to answer (no authfile, an
empty one, one with a credential and no device, `nouserok`) and a module that does not exist.
What each module returns is measured once through pamtester (`auth required MODULE`); then for
every stack, yktool.pam.stack's parse plus yktool.pam.dispatch's run must give the very result pamtester
reports (success, or the same error). The machine's /etc/pam.d is never touched (checked).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.differential import report_cases
from tests.pam_real_ns import PamNamespace
from tests.pamdriver import pam_d_digest
from yktool.host import Host
from yktool.pam import dispatch as pam_dispatch
from yktool.pam.stack import PamLine, parse_service

CASES = int(os.environ.get("YKTOOL_PAM_CASES", "300"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

STRERROR = {
    "Success": "success",
    "Permission denied": "perm_denied",
    "Authentication failure": "auth_err",
    "Authentication service cannot retrieve authentication info": "authinfo_unavail",
    "Module is unknown": "module_unknown",
    "User not known to the underlying authentication module": "user_unknown",
    "The return value should be ignored by PAM dispatch": "ignore",
    "Conversation error": "conv_err",
}

MODULES = [
    "pam_permit.so",
    "pam_deny.so",
    "pam_u2f.so authfile=@/none cue",
    "pam_u2f.so authfile=@/empty cue",
    "pam_u2f.so authfile=@/creds cue",
    "pam_u2f.so authfile=@/none nouserok cue",
    "pam_nothere.so",
]
CONTROLS = [
    "required",
    "requisite",
    "sufficient",
    "optional",
    "Required",
    "SUFFICIENT",
    "[success=done default=bad]",
    "[success=1 default=ignore]",
    "[success=2 default=ignore]",
    "[success=ok default=die]",
    "[default=ignore]",
    "[success=ok new_authtok_reqd=ok ignore=ignore default=bad]",
    "[authinfo_unavail=ignore success=ok default=bad]",
    "[success=OK default=ignore]",
    "[success=done auth_err=reset default=ignore]",
    "[success=3 default=die]",
    "[module_unknown=ignore success=ok default=bad]",
    "[success=ok default=done]",
    "requred",
    "[perm_denied=ignore default=bad success=ok]",
    "[ignore=ignore success=ok default=1]",
]
TYPES = ["auth", "auth", "auth", "AUTH", "-auth", "account", "bogus"]


def _outcome(text: str) -> str:
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    if "successfully authenticated" in tail:
        return "success"
    msg = tail.removeprefix("pamtester: ").strip()
    return STRERROR.get(msg, f"?{msg}")


@st.composite
def rule(draw: st.DrawFn, includes: list[str]) -> str:
    kind = draw(st.sampled_from(["module"] * 4 + (["include", "substack", "substack", "@include"] if includes else [])))
    typ = draw(st.sampled_from(TYPES))
    if kind == "@include":
        return f"@include {draw(st.sampled_from(includes))}"
    if kind in ("include", "substack"):
        word = draw(st.sampled_from([kind, kind.upper()]))
        return f"{typ} {word} {draw(st.sampled_from(includes))}"
    # the decisive modules and controls more often, so results travel through substacks and jumps
    module = draw(st.sampled_from(MODULES[:2] * 3 + MODULES))
    control = draw(st.sampled_from(CONTROLS[:4] * 2 + CONTROLS))
    text = f"{typ} {control} {module}"
    form = draw(st.integers(0, 5))
    if form == 0:  # a continuation (blank and comment lines in between are skipped by libpam)
        head, _, tail = text.rpartition(" ")
        text = f"{head} \\\n# between\n   {tail}"
    elif form == 1:
        text += "  # a comment \\"
    return text


@st.composite
def stack_tree(draw: st.DrawFn) -> dict[str, str]:
    inc_b = "\n".join(draw(st.lists(rule([]), max_size=4)))
    inc_a = "\n".join(draw(st.lists(rule(["inc-b", "missing"]), max_size=4)))
    main = "\n".join(draw(st.lists(rule(["inc-a", "inc-b", "missing"]), min_size=1, max_size=5)))
    return {"yktest": main + "\n", "inc-a": inc_a + "\n", "inc-b": inc_b + "\n"}


@pytest.fixture
def pam_ns(tmp_path: Path) -> Iterator[tuple[Path, PamNamespace]]:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("pamtester") is None:
        if IN_CI:
            pytest.fail("the PAM differential test needs root, unshare and pamtester")
        pytest.skip("needs root, unshare and pamtester")
    root = tmp_path / "root"
    pamd = root / "etc/pam.d"
    pamd.mkdir(parents=True)
    files = tmp_path / "files"
    files.mkdir()
    (files / "empty").write_text("")
    (files / "creds").write_text("root:AAAAAAAA,BBBBBBBB,es256,+presence\n")
    before = pam_d_digest()
    ns = PamNamespace(pamd)
    try:
        yield root, ns
    finally:
        ns.close()
        assert pam_d_digest() == before, "the machine's /etc/pam.d changed"


def test_verify_reads_pam_stacks_as_libpam_does(
    pam_ns: tuple[Path, PamNamespace], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root, ns = pam_ns
    pamd = root / "etc/pam.d"
    files = tmp_path / "files"
    # what each module returns here, measured once through the real stack
    results: dict[str, str] = {}
    for i, module in enumerate(MODULES):
        (pamd / f"probe{i}").write_text(f"auth [success=ok ignore=ok default=bad] {module.replace('@', str(files))}\n")
    for module, (_rc, out) in zip(
        MODULES, ns.authenticate([(f"probe{i}", "root") for i in range(len(MODULES))]), strict=True
    ):
        results[module] = _outcome(out)
    assert results["pam_permit.so"] == "success" and results["pam_deny.so"] == "auth_err", results
    assert results["pam_nothere.so"] == "module_unknown", results
    by_module = {" ".join(m.replace("@", str(files)).split()): r for m, r in results.items()}

    def result_of(line: PamLine) -> str:
        return by_module[" ".join([line.module, *line.args])]

    counts = {"cases": 0, "passed": 0, "failed": 0}
    started = time.monotonic()

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(tree=stack_tree())
    def compare(tree: dict[str, str]) -> None:
        for name, text in tree.items():
            (pamd / name).write_text(text.replace("@", str(files)))
        ((_rc, out),) = ns.authenticate([("yktest", "root")])
        real = _outcome(out)
        svc = parse_service(Host(root), "yktest")
        ours = pam_dispatch.run(svc.handlers("auth"), result_of)
        counts["cases"] += 1
        counts["passed" if real == "success" else "failed"] += 1
        shown = "\n".join(f"--- {n}\n{t}" for n, t in tree.items())
        assert ours == real, f"libpam says {real}, verify's reading says {ours}\n{shown}"

    try:
        compare()
    finally:
        seconds = round(time.monotonic() - started, 1)
        report_cases(request, "pamtester", seconds=seconds, modules=results, **counts)
        print(f"pam differential: {counts} in {seconds} s; modules: {results}")
    assert counts["passed"] >= CASES // 20 and counts["failed"] >= CASES // 4, counts


U2F_ARGS = [
    "cue",
    "cue=1",
    "cuex",
    "nouserok",
    "nouserok=0",
    "alwaysok",
    "manual",
    "openasuser",
    "interactive",
    "nodetect",
    "sshformat",
    "sshformatX",
    "authfile=/etc/u2f_mappings",
    "authfile=/other",
    "authfile=",
    "[authfile=/with space]",
    "[origin=pam://a b]",
    "origin=pam://ws1",
    "appid=pam://x",
    "prompt=Touch",
    "authpending_file=/run/p",
    "userpresence=1",
    "userpresence=0",
    "userpresence=1x",
    "userpresence=x",
    "userverification=1",
    "pinverification=1",
    "pinverification= 1",
    "max_devices=3",
    "max_devices=x",
    "[cue]",
    "Cue",
    "expand",
    "debug_file=stderr",
]
DUMPED_FLAGS = ("interactive", "cue", "nodetect", "manual", "nouserok", "openasuser", "alwaysok", "sshformat")
DUMPED_INTS = ("userpresence", "userverification", "pinverification")
DUMPED_STRS = ("authfile", "authpending_file", "origin", "appid", "prompt")


def test_verify_reads_pam_u2f_arguments_as_pam_u2f_does(
    pam_ns: tuple[Path, PamNamespace], request: pytest.FixtureRequest
) -> None:
    """pam_u2f's `debug` prints its parsed configuration (parse_cfg): it must be verify's reading of
    the same rule (libpam's tokenizing of `[a b]` arguments included)."""
    root, ns = pam_ns
    pamd = root / "etc/pam.d"
    counts = {"cases": 0}
    started = time.monotonic()

    @settings(
        max_examples=max(CASES // 3, 50),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(args=st.lists(st.sampled_from(U2F_ARGS), max_size=6))
    def compare(args: list[str]) -> None:
        (pamd / "yktest").write_text(f"auth required pam_u2f.so debug {' '.join(args)}\n")
        ((_rc, out),) = ns.authenticate([("yktest", "root")])
        dumped = {}
        for line in out.splitlines():
            if "(parse_cfg): " in line and "=" in line and "argv[" not in line:
                key, _, value = line.split("(parse_cfg): ", 1)[1].partition("=")
                dumped[key] = value
        opts = parse_service(Host(root), "yktest").u2f_lines[0].options
        counts["cases"] += 1
        for flag in DUMPED_FLAGS:
            assert dumped[flag] == str(int(getattr(opts, flag))), (flag, args, dumped)
        for key in DUMPED_INTS:
            ours = getattr(opts, key)
            assert int(dumped[key]) == (-1 if ours is None else ours), (key, args, dumped)
        for key in DUMPED_STRS:
            ours = getattr(opts, key)
            assert dumped[key] == ("(null)" if ours is None else ours), (key, args, dumped)
        ours_max = opts.max_devices
        assert int(dumped["max_devices"]) == (0 if ours_max is None else ours_max), (args, dumped)

    try:
        compare()
    finally:
        seconds = round(time.monotonic() - started, 1)
        report_cases(request, "pam_u2f debug", seconds=seconds, **counts)
        print(f"pam_u2f arguments differential: {counts} in {seconds} s")
