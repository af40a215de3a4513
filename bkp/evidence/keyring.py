"""The installation's certificate signing keys: a ring of public halves, one private key.

Every key that ever signed a certificate stays in the ring with its validity period, so a
certificate is checked with the key named in it, for as long as the certificate is kept:
rotating the key, or losing the host and starting over with a new one, never makes an old
certificate fail. Layout under $BKP_HOME/keys/ (0700):

    keyring.json              every key's public half: id (SHA256: fingerprint of the raw
                              public key), algorithm, created_at, not_after (null while it
                              signs), the public key, and the self-signed X.509 certificate
                              that carries it in PDF signatures. Only public data: it is what
                              `bkp evidence backup` copies off-site and auditors may pin.
    private/<hex>.key         the private half of the current key (PKCS#8 PEM, 0600, in a
                              0700 directory). Never copied by bkp: escrow it by hand (see
                              runbooks/disaster-recovery.md); after a disaster put it back
                              under the same name, or retire it with `certificate key rotate`.
    .lock                     held while a certificate is signed or the ring changes, so a
                              rotation never falls in the middle of an issue.
    certificate-signing.key   the single key of bkp before the ring; read as the ring's one
                              key, moved into the ring by the first command that signs.

Keys are made explicitly (`bkp certificate key create|rotate`) or by the first command that
signs; reading (public-key, verify) never creates a file. A retired key's private half is
deleted: it can sign nothing again, and verifying needs only its public half.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from bkp.errors import OperationError

RING_FORMAT = "bkp-keyring/1"
KEYS_DIR = Path("keys")
RING_FILE = KEYS_DIR / "keyring.json"
PRIVATE_DIR = KEYS_DIR / "private"
LOCK_FILE = KEYS_DIR / ".lock"
LEGACY_KEY_FILE = KEYS_DIR / "certificate-signing.key"
ALGORITHM = "Ed25519"


@dataclass(frozen=True)
class RingKey:
    """One signing key's public half and the period in which it may sign."""

    id: str
    algorithm: str
    public_key: str  # base64 of the raw 32-byte Ed25519 public key
    created_at: str
    not_after: str | None = None  # set when the key is retired
    certificate_pem: str | None = None  # self-signed X.509 carrying it in PDF signatures
    source: str = "key ring"  # where it was read from (not stored)

    @property
    def current(self) -> bool:
        return self.not_after is None

    def raw(self) -> bytes:
        return base64.b64decode(self.public_key)

    def key(self):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw())

    def validity_problem(self, when: str | datetime | None, what: str) -> str | None:
        """Why a signature made at `when` is outside this key's validity; None when inside
        (or when the validity is unknown: a bare pinned public key has none)."""
        if when is None or not self.created_at:
            return None
        try:
            moment = _time(when)
        except (ValueError, TypeError, AttributeError):
            return f"{what} {when!r}, which is not a time"
        if moment < _time(self.created_at):
            return (f"{what} {_show(moment)}, before key {self.id} was created "
                    f"({self.created_at})")
        if self.not_after and moment > _time(self.not_after):
            return (f"{what} {_show(moment)}, after key {self.id} was retired "
                    f"({self.not_after})")
        return None

    def describe(self) -> str:
        if not self.created_at:
            return f"{self.algorithm}, from {self.source}, validity not known"
        until = f"retired {self.not_after}" if self.not_after else "current"
        return f"{self.algorithm}, valid from {self.created_at}, {until}; from {self.source}"

    def as_json(self) -> dict:
        from bkp.evidence.certificates import public_key_pem

        return {"id": self.id, "algorithm": self.algorithm, "created_at": self.created_at,
                "not_after": self.not_after, "current": self.current, "source": self.source,
                "public_key_pem": public_key_pem(self.key()),
                "certificate_pem": self.certificate_pem}

    def stored(self) -> dict:
        entry = asdict(self)
        entry.pop("source")
        return entry


def key_id(public_key) -> str:
    from bkp.evidence.certificates import key_fingerprint

    return key_fingerprint(public_key)


def private_path(home: Path, key: RingKey) -> Path:
    return home / PRIVATE_DIR / f"{key.id.removeprefix('SHA256:')}.key"


# ---------------------------------------------------------------- reading (never writes)

def load_ring(home: Path) -> list[RingKey]:
    """The ring, oldest key first; empty when bkp never signed here. Writes nothing: a
    key file from before the ring is shown as the ring's one key."""
    path = home / RING_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        legacy = _legacy_key(home)
        return [legacy] if legacy else []
    except OSError as exc:
        raise OperationError(f"cannot read the key ring {path}: {exc.strerror}") from None
    return parse_ring(text, str(path))


def export_ring(home: Path) -> str | None:
    """The key ring as the text of keyring.json, for the evidence copy and for auditors:
    the stored ring, or the one key of a bkp before the ring (whose only file is private
    and must never be copied). Public halves only; None when bkp never had a key here."""
    ring = load_ring(home)
    if not ring:
        return None
    return _ring_text(ring)


def merge_ring(home: Path, text: str, where: str) -> list[RingKey]:
    """Add the keys of a ring copy (the evidence copy) to this installation's ring: a key
    made here before the recovery never pushes the recovered keys out. Public halves only."""
    recovered = parse_ring(text, where)
    (home / KEYS_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(home):
        ring = load_ring(home)
        known = {key.id for key in ring}
        merged = ring + [key for key in recovered if key.id not in known]
        merged.sort(key=lambda key: key.created_at or "")
        _write_ring(home, merged)
    return merged


def parse_ring(text: str, where: str, source: str = "key ring") -> list[RingKey]:
    """The keys of a ring file (ours, or a copy an auditor pinned)."""
    try:
        data = json.loads(text)
        if data.get("format") != RING_FORMAT:
            raise ValueError(f"format is not {RING_FORMAT}")
        known = {f.name for f in fields(RingKey)} - {"source"}
        # Fields a later bkp may add are left aside, not taken for damage.
        keys = [RingKey(**{k: v for k, v in entry.items() if k in known}, source=source)
                for entry in data["keys"]]
        for key in keys:
            if key.algorithm != ALGORITHM or key_id(key.key()) != key.id:
                raise ValueError(f"key {key.id} does not match its public key")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise OperationError(f"the key ring {where} is damaged ({exc}); restore it from "
                             f"the evidence copy") from None
    return keys


def current_key(ring: list[RingKey]) -> RingKey | None:
    current = [k for k in ring if k.current]
    return current[-1] if current else None


def find_key(ring: list[RingKey], wanted: str | None) -> RingKey | None:
    return next((k for k in ring if k.id == wanted), None)


def find_raw(ring: list[RingKey], raw: bytes) -> RingKey | None:
    return next((k for k in ring if k.raw() == raw), None)


def no_key_message(home: Path) -> str:
    return (f"there is no certificate signing key in {home / KEYS_DIR} yet: bkp makes one "
            f"with `bkp certificate key create` or when it issues its first certificate")


def _legacy_key(home: Path) -> RingKey | None:
    path = home / LEGACY_KEY_FILE
    try:
        private = _load_private(path)
        made = datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)
    except FileNotFoundError:
        return None
    public = private.public_key()
    from bkp.evidence.certificates import raw_public_key

    return RingKey(key_id(public), ALGORITHM, base64.b64encode(raw_public_key(public)).decode(),
                   _stamp(made), source=f"{path} (before the key ring)")


# ---------------------------------------------------------------- signing and changing

@dataclass(frozen=True)
class Signer:
    private_key: object
    key: RingKey
    created: RingKey | None  # the key this signing made first, to record


@contextlib.contextmanager
def signing_key(home: Path, create: bool = True) -> Iterator[Signer]:
    """The current key with its private half, the ring locked meanwhile (a rotation waits
    until the certificate is signed). Makes the first key when there is none."""
    with _locked(home):
        ring = _adopt_legacy(home, load_ring(home))
        created = None
        if current_key(ring) is None:
            if not create:
                raise OperationError(no_key_message(home))
            created = _create(home, ring)
            ring = load_ring(home)
        key = current_key(ring)
        yield Signer(load_private(home, key), key, created)


def check_can_sign(home: Path) -> None:
    """Before work that ends in a certificate (a wipe): refuse when the current key's
    private half is gone, rather than wiping a disk that then cannot be certified."""
    key = current_key(load_ring(home))
    if key is not None and key.source == "key ring":
        load_private(home, key)


def create_key(home: Path) -> RingKey:
    """`bkp certificate key create`: the first key, or a new one after every key was
    retired. Refused while a current key exists (that is what rotate is for)."""
    with _locked(home):
        ring = _adopt_legacy(home, load_ring(home))
        current = current_key(ring)
        if current is not None:
            raise OperationError(f"this installation already has a current signing key "
                                 f"{current.id}; `bkp certificate key rotate` replaces it")
        return _create(home, ring)


def rotate_key(home: Path) -> tuple[RingKey, RingKey]:
    """Retire the current key (its certificates keep verifying) and make a new one. Works
    without the retired key's private half: that is how a lost key is replaced."""
    with _locked(home):
        ring = _adopt_legacy(home, load_ring(home))
        old = current_key(ring)
        if old is None:
            raise OperationError(f"{no_key_message(home)}; there is nothing to rotate")
        retired = replace(old, not_after=_stamp(datetime.now(UTC)))
        ring = [retired if k.id == old.id else k for k in ring]
        new = _create(home, ring)  # the ring is written once, with both changes
        with contextlib.suppress(FileNotFoundError):
            private_path(home, old).unlink()
        return retired, new


def load_private(home: Path, key: RingKey):
    path = private_path(home, key)
    try:
        private = _load_private(path)
    except FileNotFoundError:
        raise OperationError(f"the private half of the current signing key {key.id} is "
                             f"missing ({path}): put the escrowed key back there (mode "
                             f"0600), or retire it with `bkp certificate key rotate`") from None
    if key_id(private.public_key()) != key.id:
        raise OperationError(f"{path} does not hold the private half of key {key.id}")
    return private


def _load_private(path: Path):
    from cryptography.hazmat.primitives import serialization

    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise OperationError(f"cannot read the signing key {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise OperationError(f"the signing key {path} is readable by others (mode "
                             f"{mode:04o}); `chmod 600 {path}`")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise OperationError(f"the signing key {path} is damaged ({exc})") from None


def _create(home: Path, ring: list[RingKey]) -> RingKey:
    """A new Ed25519 key: private half written first, then the ring that names it (an
    interrupted creation leaves an unused file, never a ring naming a key that is not
    there)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bkp.evidence.certificates import raw_public_key
    from bkp.evidence.pdf_signature import self_signed_certificate

    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    # Whole seconds: PDF signing times and X.509 validity have no finer grain.
    created = datetime.now(UTC).replace(microsecond=0)
    key = RingKey(key_id(public), ALGORITHM,
                  base64.b64encode(raw_public_key(public)).decode(), _stamp(created),
                  certificate_pem=self_signed_certificate(private, created))
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(private_path(home, key), pem)
    _write_ring(home, [*ring, key])
    return key


def _adopt_legacy(home: Path, ring: list[RingKey]) -> list[RingKey]:
    """Move the key of bkp before the ring into the ring (under the lock, by a command that
    signs): same key, same validity, so its certificates keep verifying."""
    legacy_file = home / LEGACY_KEY_FILE
    if len(ring) != 1 or ring[0].source == "key ring":
        if legacy_file.exists():
            _forget_adopted(home, ring, legacy_file)
        return ring
    private = _load_private(legacy_file)
    from bkp.evidence.pdf_signature import self_signed_certificate

    key = replace(ring[0], source="key ring", certificate_pem=self_signed_certificate(
        private, _time(ring[0].created_at)))
    target = private_path(home, key)
    target.parent.mkdir(mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.link(legacy_file, target)
    _write_ring(home, [key])
    legacy_file.unlink()
    return [key]


def _forget_adopted(home: Path, ring: list[RingKey], legacy_file: Path) -> None:
    """An adoption cut short after the ring was written leaves the old file: it goes once
    the ring holds that key and its private half sits in private/ (else it is kept)."""
    legacy_id = key_id(_load_private(legacy_file).public_key())
    adopted = find_key(ring, legacy_id)
    if adopted is not None and private_path(home, adopted).exists():
        legacy_file.unlink()


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


def _write_ring(home: Path, ring: list[RingKey]) -> None:
    """Written aside and renamed into place: a reader sees the old ring or the new one."""
    path = home / RING_FILE
    text = _ring_text(ring)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with open(temporary, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ring_text(ring: list[RingKey]) -> str:
    return json.dumps({"format": RING_FORMAT, "keys": [k.stored() for k in ring]},
                      indent=2) + "\n"


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    directory = home / KEYS_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise OperationError(f"cannot use the key directory {directory}: "
                             f"{exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- times

def _time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _stamp(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(moment: datetime) -> str:
    return _stamp(moment)
