"""PDF signatures (PAdES baseline B-B) over the whole file, with the installation's key.

A certificate's PDF is signed as a PDF, not only through the signed JSON it carries: the
page a person reads is covered too, so changing what it shows breaks the signature. The
signature is a certification signature (DocMDP "no changes allowed") made by pyHanko with
the installation's Ed25519 key (ISO 32002: EdDSA in PDF, SHA-512 digest, RFC 8419 CMS),
carried by a self-signed X.509 certificate that bkp makes for each key of its key ring.
There is no time-stamp authority: the signing time is the one the signer states, which is
why `bkp certificate verify` also checks the file's SHA-256 against the audit trail.

What checks what:
- `bkp certificate verify FILE.pdf`: the signature is intact and covers the whole file (a
  PDF with anything added after its signature, such as an incremental update with an
  annotation, a second revision or a second signature, is refused), the signer's public
  key is a key of the installation's key ring (or of `--public-key`) valid at the signing
  time, plus the signed JSON inside and the audit trail.
- pyHanko validates the same signature (its command line `pyhanko sign validate`, from the
  separate pyhanko-cli package, trusting the key's `certificate_pem` from `bkp certificate
  public-key --json`).
- Adobe Acrobat and Reader: Adobe's published list of supported signature algorithms has
  RSA, DSA and ECDSA and no EdDSA, so expect them to say the signature cannot be validated;
  they are no proof either way. (Not tried here: no Acrobat on the build machine.)
- Poppler (`pdfsig`, evince, okular) validates through NSS; whether it accepts Ed25519
  depends on the NSS version of the viewer's system (not tried here).
Ed25519 is kept anyway: it is the key the ring and the signed JSON already use, one key and
one fingerprint per installation. Should a viewer that auditors use need ECDSA, a P-256
key could carry the PDF signature beside it; the ring's format has an `algorithm` field
for that.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

FIELD_NAME = "bkp-signature"
SIGNING_LIFETIME_YEARS = 100  # the X.509 carrier's own dates; the key ring says when it signs

# pyHanko logs every validation problem with a traceback; bkp states them as sentences.
for _name in ("pyhanko", "pyhanko_certvalidator"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


def self_signed_certificate(private_key, created: datetime) -> str:
    """The X.509 certificate that carries an Ed25519 key in PDF signatures (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from bkp.evidence.certificates import key_fingerprint

    public = private_key.public_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bkp"),
        x509.NameAttribute(NameOID.COMMON_NAME, "bkp certificate signing key"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, key_fingerprint(public)[7:39]),
    ])
    usage = x509.KeyUsage(digital_signature=True, content_commitment=True,
                          key_encipherment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(created)
        .not_valid_after(created.replace(year=created.year + SIGNING_LIFETIME_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(private_key, None))
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def sign_pdf(pdf: bytes, private_key, certificate_pem: str, reason: str) -> bytes:
    """`pdf` with an invisible certification signature over all of it."""
    from asn1crypto import keys as asn1_keys
    from asn1crypto import pem as asn1_pem
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    _, _, der = asn1_pem.unarmor(certificate_pem.encode())
    certificate = asn1_x509.Certificate.load(der)
    key = asn1_keys.PrivateKeyInfo.load(private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    signer = signers.SimpleSigner(signing_cert=certificate, signing_key=key,
                                  cert_registry=SimpleCertificateStore.from_certs(
                                      [certificate]))
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME, subfilter=fields.SigSeedSubFilter.PADES, md_algorithm="sha512",
        certify=True, docmdp_permissions=fields.MDPPerm.NO_CHANGES, reason=reason,
        name="bkp")
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    return signers.sign_pdf(writer, meta, signer=signer).getvalue()


@dataclass
class SignatureCheck:
    """What the PDF signature of a file shows. `problems` empty: intact over the whole file
    (whose signer is then `signer_key`, to be matched with trusted keys by the caller)."""

    signed: bool = False
    intact: bool | None = None
    whole_file: bool | None = None
    revisions: int | None = None
    signer_key: bytes | None = None  # raw Ed25519 public key of the signer's certificate
    signer_algorithm: str | None = None
    signed_at: datetime | None = None
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"signed": self.signed, "intact": self.intact, "whole_file": self.whole_file,
                "revisions": self.revisions,
                "signed_at": self.signed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if self.signed_at else None}


def check_signature(data: bytes) -> SignatureCheck:
    """Check the one PDF signature bkp puts on a file. Anything that cannot be read as such
    (not a PDF, no signature, damaged) is a problem: a file bkp cannot prove is not ours."""
    check = SignatureCheck()
    try:
        _check(data, check)
    except Exception as exc:  # hostile or damaged input can fail anywhere in a PDF parser
        check.problems.append(f"the file cannot be read as a signed PDF ({_reason(exc)})")
    return check


def _check(data: bytes, check: SignatureCheck) -> None:
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    reader = PdfFileReader(io.BytesIO(data), strict=False)
    check.revisions = reader.xrefs.total_revisions
    signatures = reader.embedded_signatures
    if not signatures:
        check.problems.append("the PDF carries no PDF signature (it was made by a bkp that "
                              "did not sign PDFs yet, or its signature was removed)")
        return
    check.signed = True
    if len(signatures) > 1:
        check.problems.append(f"the PDF carries {len(signatures)} signatures; bkp signs a "
                              f"certificate once, so the others were added after it")
    signature = signatures[0]
    signer = signature.signer_cert
    check.signer_algorithm = signer.public_key.algorithm
    check.signer_key = _raw_key(signer)
    # Trust is decided by the caller against the key ring; here only integrity and coverage,
    # so the signer's own certificate is its anchor.
    context = ValidationContext(trust_roots=[signer], allow_fetching=False)
    status = validate_pdf_signature(signature, context)
    check.signed_at = status.signer_reported_dt
    check.intact = bool(status.intact and status.valid)
    check.whole_file = status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    if not status.intact:
        check.problems.append("the PDF was changed after it was signed: the bytes its "
                              "signature covers no longer match it (content edited, or the "
                              "file rewritten)")
    elif not status.valid:
        check.problems.append("the PDF signature's value does not match the signed bytes")
    if not check.whole_file and status.intact:
        after = check.revisions - 1 - signature.signed_revision
        check.problems.append(
            f"the PDF has {after} incremental update{'s' if after != 1 else ''} after its "
            f"signature (a later revision can change what the page shows, e.g. an added "
            f"annotation or a second signature)" if after > 0 else
            "the PDF has bytes added after its signed end")


def _raw_key(certificate) -> bytes | None:
    info = certificate.public_key
    if info.algorithm != "ed25519":
        return None
    return bytes(info["public_key"])


def attachment(data: bytes, name: str) -> bytes | None:
    """The embedded file called `name` (the signed JSON of a certificate), or None."""
    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(io.BytesIO(data), strict=False)
    names = reader.root.get("/Names")
    if names is None or "/EmbeddedFiles" not in names:
        return None
    entries = names["/EmbeddedFiles"].get("/Names")
    if entries is None:
        return None
    for index in range(0, len(entries) - 1, 2):
        if str(entries[index]) == name:
            return entries[index + 1]["/EF"]["/F"].data
    return None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
