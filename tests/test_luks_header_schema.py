"""The LUKS2 metadata reader (issue 12, item 13): JSON outside the schema it relies on is a damaged
or unknown header, a clear error with a hint (exit 2), never a TypeError or AttributeError.
Fuzzed with hypothesis on JSON shapes grown from a real header; and a real image carrying tokens
of odd shapes that cryptsetup accepts (as another tool may write them) goes through the commands."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import CliCall
from tests.fixtures.luks import LuksImage
from yktool.errors import ExitCode
from yktool.luks.header import LuksHeader, NotLuks, parse_metadata

SAMPLE: dict[str, Any] = {
    "keyslots": {
        "0": {
            "type": "luks2",
            "key_size": 64,
            "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
            "area": {
                "type": "raw",
                "offset": "32768",
                "size": "258048",
                "encryption": "aes-xts-plain64",
                "key_size": 64,
            },
            "kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": 1000, "salt": "uVaG8Hp="},
        },
        "1": {
            "type": "luks2",
            "key_size": 64,
            "priority": 1,
            "kdf": {"type": "argon2id", "time": 4, "memory": 1048576, "cpus": 4, "salt": "aGVsbG8="},
        },
    },
    "tokens": {
        "0": {
            "type": "systemd-fido2",
            "keyslots": ["1"],
            "fido2-credential": "AAAA",
            "fido2-salt": "AAAA",
            "fido2-rp": "io.systemd.cryptsetup",
            "fido2-clientPin-required": True,
        },
        "1": {
            "type": "systemd-tpm2",
            "keyslots": ["0"],
            "tpm2-pcrs": [7],
            "tpm2-pcr-bank": "sha256",
            "tpm2-pin": False,
        },
        "2": {"type": "acme-hsm", "keyslots": []},
    },
    "segments": {
        "0": {
            "type": "crypt",
            "offset": "16777216",
            "size": "dynamic",
            "encryption": "aes-xts-plain64",
            "sector_size": 4096,
        }
    },
    "digests": {"0": {"type": "pbkdf2", "keyslots": ["0", "1"], "segments": ["0"], "hash": "sha256"}},
    "config": {"json_size": "12288", "keyslots_size": "16744448"},
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["0", "1", "7", "luks2", "pbkdf2", "systemd-fido2"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["0", "1", "type", "keyslots", "kdf", "key_size", "x", "01", "-1"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _set(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = _set(node[path[0]], path[1:], value)
    return node


def _parsed_or_refused(meta: Any) -> None:
    """The one promise: a LuksHeader whose fields have the types the rest of yktool uses, or
    NotLuks (exit 2) with a hint; any other exception fails the test."""
    meta = json.loads(json.dumps(meta))  # a JSON shape, as cryptsetup would print it
    try:
        header = parse_metadata("/dev/vdz", 2, "uuid", "", meta)
    except NotLuks as err:
        assert err.exit_code == ExitCode.USAGE and err.hint
        return
    assert isinstance(header, LuksHeader)
    for slot in header.keyslots.values():
        assert isinstance(slot.key_size, int) and isinstance(slot.kdf, str) and isinstance(slot.cost, str)
        assert all(isinstance(t, int) for t in slot.tokens) and isinstance(slot.role, str)
    for token in header.tokens.values():
        assert isinstance(token.type, str) and all(isinstance(k, int) for k in token.keyslots)
        json.dumps(token.to_json())
    json.dumps(header.to_json())
    assert isinstance(header.knowledge_slots, list) and isinstance(header.hardware_slots, list)


def test_the_sample_header_parses() -> None:
    header = parse_metadata("/dev/vdz", 2, "uuid", "", copy.deepcopy(SAMPLE))
    assert header.slots_with_role("fido2") == [1] and header.slots_with_role("tpm2") == [0]


@pytest.mark.parametrize(
    "where, value, named",
    [
        (("keyslots", "0", "kdf"), "pbkdf2", "kdf is not an object"),
        (("keyslots",), ["0"], "keyslots is a JSON list"),
        (("tokens",), [1], "tokens is a JSON list"),
        (("tokens", "1", "keyslots"), 5, "keyslots is not a list"),
        (("keyslots", "1", "kdf", "time"), "4", "kdf time is not a number"),
        (("keyslots", "0", "key_size"), None, "key_size is not a number"),
    ],
)
def test_shapes_outside_the_schema_are_a_damaged_header(where: tuple[str, ...], value: Any, named: str) -> None:
    meta = _set(copy.deepcopy(SAMPLE), where, value)
    with pytest.raises(NotLuks, match="damaged or of an unknown kind") as err:
        parse_metadata("/dev/vdz", 2, "uuid", "", meta)
    assert named in err.value.message and "cryptsetup luksDump /dev/vdz" in err.value.hint


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzzed_json_shapes_are_parsed_or_called_damaged(data: st.DataObject) -> None:
    meta: Any = copy.deepcopy(SAMPLE)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(list(_paths(meta))), label="path")
        meta = _set(meta, path, data.draw(json_values, label="value"))
    _parsed_or_refused(meta)


@settings(max_examples=100, deadline=None)
@given(meta=json_values)
def test_any_json_is_parsed_or_called_damaged(meta: Any) -> None:
    _parsed_or_refused(meta)


def test_tokens_of_odd_shapes_on_a_real_image_never_crash_the_commands(cli: CliCall, luks2_image: LuksImage) -> None:
    # cryptsetup without its systemd plugins (as another tool writes them) accepts these
    for token in (
        {
            "type": "systemd-fido2",
            "keyslots": ["0"],
            "fido2-credential": 5,
            "fido2-salt": {"a": 1},
            "fido2-up-required": "no",
        },
        {"type": "systemd-tpm2", "keyslots": ["0"], "tpm2-pcrs": "7", "tpm2-blob": [1, 2], "tpm2-pin": {"x": []}},
        {"type": "systemd-recovery", "keyslots": ["0"], "extra": None},
    ):
        subprocess.run(
            ["cryptsetup", "token", "import", "--disable-external-tokens", str(luks2_image.path)],
            input=json.dumps(token).encode(),
            check=True,
            capture_output=True,
        )
    codes = {int(c) for c in ExitCode}
    for args in (("luks", "status"), ("--json", "luks", "status"), ("--dry-run", "luks", "wipe", "--slot", "0")):
        res = cli(*args, luks2_image.path, input="")
        assert res.exit_code in codes and "Traceback" not in res.output, res.output
    status = json.loads(cli("--json", "luks", "status", luks2_image.path).stdout)
    assert [t["type"] for t in status["tokens"]] == ["systemd-fido2", "systemd-tpm2", "systemd-recovery"]
