"""The VM tier's fixtures: only ever loaded inside scripts/test-vm's guest (tests/conftest.py refuses
tests/vm anywhere else). Helpers are in tests/vm/support.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vm.support import TPM, Mapper, run


@pytest.fixture(scope="session", autouse=True)
def vm_kernel() -> None:
    """Kernel modules the tier needs, and a TPM that does not lock out after the wrong-PIN tests."""
    run(["modprobe", "-a", "loop", "dm_crypt", "ext4"], check=True)
    run(["tpm2_dictionarylockout", "-T", TPM, "--clear-lockout"], check=True)
    run(["tpm2_dictionarylockout", "-T", TPM, "--setup-parameters", "--max-tries=32", "--recovery-time=0",
         "--lockout-recovery-time=0"], check=True)


@pytest.fixture
def mapper() -> Iterator[Mapper]:
    m = Mapper()
    try:
        yield m
    finally:
        m.cleanup()
