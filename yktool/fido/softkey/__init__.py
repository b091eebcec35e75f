"""yktool's software FIDO2 authenticator (CTAP 2.1 behind python-fido2's `CtapDevice`).

- `device`: `SoftKey`, the authenticator and its command dispatch
- `pin`: clientPIN (key agreement, retries, pinUvAuthTokens)
- `credman`: authenticatorCredentialManagement
- `state`: the state file (written atomically, re-read under a lock per command) and the
  credential wrapping

Each of `pin`, `credman` and `state` is given what it works on; none reaches into `SoftKey`.
"""

from yktool.fido.softkey.device import AAGUID, PRODUCT_ID, PRODUCT_NAME, RESET_WINDOW, VENDOR_ID, Presence, SoftKey
from yktool.fido.softkey.state import StateError

__all__ = ["AAGUID", "PRODUCT_ID", "PRODUCT_NAME", "RESET_WINDOW", "VENDOR_ID", "Presence", "SoftKey", "StateError"]
