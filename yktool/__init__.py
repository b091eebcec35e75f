"""yktool: enroll a FIDO2 security key and the TPM2 into every layer of a hardened Linux host."""


def __getattr__(name: str) -> str:
    # The version is written once, in pyproject.toml; read from the installed metadata only when
    # asked (importlib.metadata costs `yktool --help` time it does not need).
    if name == "__version__":
        from importlib.metadata import version

        return version("yktool")
    raise AttributeError(f"module 'yktool' has no attribute {name!r}")
