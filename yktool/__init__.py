"""yktool: enroll a FIDO2 security key and the TPM2 into every layer of a hardened Linux host.

The version is written once, in pyproject.toml; `yktool --version` and the man page read it
from the installed metadata (importlib.metadata.version("yktool")).
"""
