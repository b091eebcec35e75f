"""yktool: enroll a FIDO2 security key and the TPM2 into every layer of a hardened Linux host."""

__version__ = "0.1.0"
