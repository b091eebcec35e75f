"""pam_u2f on a host: its authfile, the PAM stack (read and run as libpam does), registering and
proving a credential, and the checks `pam check` and verify's `pam.*` share.

    authfile    the authfile format: parse, merge, render (byte for byte)
    stack       /etc/pam.d under a root, read as libpam reads it
    dispatch    what libpam's dispatcher makes of a stack, given each rule's result
    host_facts  users, host name (the default origin), pam-u2f version, encrypted homes
    proof       an assertion checked against the public key about to be stored
    register    `pam register`: make, prove, merge, record
    check       `pam check`'s report, built from the shared findings
"""
