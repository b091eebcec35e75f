"""FIDO2-backed OpenSSH keys (sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com).

- `keys`: the public blob, .pub line, fingerprint and the openssh-key-v1 key-handle file;
- `sshsig`: SSHSIG signatures made by the security key (namespace `git` for commits);
- `wire`: the SSH wire encoding;
- `enroll`: making a key through python-fido2, downloading resident keys, signing.
"""
