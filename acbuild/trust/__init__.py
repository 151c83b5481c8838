"""Signatures and whom to believe: GnuPG through python-gnupg, signing, verification in
an isolated keyring, and the prefix-scoped trust store in rkt's layout.

May import: acbuild.plan and the layers below it.
"""
