"""Test repositories opened with a cheap key derivation.

restic derives each repository's key with scrypt parameters it calibrates at `init` to cost
about half a second of CPU, and pays that again at every command that opens the
repository. Over the suite's thousands of restic processes that was most of its CPU time.
After `bkp init` the tests replace the repository's one key file by one that wraps the same
master key under scrypt N=2^10: restic itself still does all the work, with the same master
key and data, only the password check is cheap. Production repositories are untouched: only
the test fixtures call this.

The key file format is restic's own (doc/design.rst, "Keys, Encryption and MAC"): scrypt
gives 64 bytes, the AES-256 key then the Poly1305-AES key (k, r); the sealed master key is
nonce || AES-256-CTR(plaintext) || Poly1305-AES MAC of the ciphertext.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

CHEAP = {"N": 1024, "r": 8, "p": 1}


def cheapen(repository: Path, password: str) -> bool:
    """Re-wrap the master key of a local repository with cheap scrypt parameters; False
    (nothing touched) unless it has exactly one key this password opens, still expensive."""
    keys = repository / "keys"
    try:
        [key_file] = [path for path in keys.iterdir() if path.is_file()]
        key = json.loads(key_file.read_text())
    except (OSError, ValueError):
        return False
    if key.get("kdf") != "scrypt" or key.get("N", 0) <= CHEAP["N"]:
        return False
    master = _open(key, password)
    if master is None:
        return False
    salt = os.urandom(64)
    sealed = _seal(_derive(password, salt, CHEAP), master)
    new = {**key, **CHEAP, "salt": base64.b64encode(salt).decode(),
           "data": base64.b64encode(sealed).decode()}
    content = json.dumps(new).encode()
    new_file = keys / hashlib.sha256(content).hexdigest()
    new_file.write_bytes(content)
    new_file.chmod(key_file.stat().st_mode & 0o777)
    key_file.unlink()
    return True


def _derive(password: str, salt: bytes, params: dict) -> tuple[bytes, bytes, bytes]:
    derived = hashlib.scrypt(password.encode(), salt=salt, n=params["N"], r=params["r"],
                             p=params["p"], maxmem=2 ** 31 - 1, dklen=64)
    return derived[:32], derived[32:48], derived[48:64]


def _mac(keys: tuple[bytes, bytes, bytes], nonce: bytes, ciphertext: bytes) -> bytes:
    _, k, r = keys
    aes = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
    mac = Poly1305(r + aes.update(nonce) + aes.finalize())
    mac.update(ciphertext)
    return mac.finalize()


def _open(key: dict, password: str) -> bytes | None:
    keys = _derive(password, base64.b64decode(key["salt"]), key)
    data = base64.b64decode(key["data"])
    nonce, ciphertext, tag = data[:16], data[16:-16], data[-16:]
    if _mac(keys, nonce, ciphertext) != tag:
        return None
    decryptor = Cipher(algorithms.AES(keys[0]), modes.CTR(nonce)).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()


def _seal(keys: tuple[bytes, bytes, bytes], plaintext: bytes) -> bytes:
    nonce = os.urandom(16)
    encryptor = Cipher(algorithms.AES(keys[0]), modes.CTR(nonce)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return nonce + ciphertext + _mac(keys, nonce, ciphertext)
