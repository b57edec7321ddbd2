"""The narrow subset of HTTP Message Signatures (RFC 9421) that a device and the cloud speak.

Pure: bytes and strings in, headers or a ``SignatureError`` out; no clock, no network.
The caller passes ``now`` and keeps the replay cache (``bentos.auth``).

What a signed request carries (RFC 9421 section 4, RFC 9530 for the digest):

    Content-Digest:  sha-256=:<base64 of SHA-256(body)>:
    Signature-Input: sig1=("@method" "@path" "content-digest");created=1700000000;nonce="...";keyid="...";alg="ed25519"
    Signature:       sig1=:<base64 of the Ed25519 signature over the signature base>:

The signature base (section 2.5) is one line per covered component, in the order the
Signature-Input lists them, then ``"@signature-params": <the inner list as sent>``.

The subset, and why so narrow: exactly one signature per request (one dictionary member,
the same label in both headers); the covered components must be exactly ``@method``,
``@path`` and ``content-digest``, in any order; parameters ``created`` (integer, required),
``nonce`` (required), ``keyid`` (required), ``alg`` (only ``ed25519``), ``expires``
(integer) and ``tag``, each at most once; strings without backslash escapes.  Anything
else is refused as malformed rather than half-understood: a verifier that accepts more
forms than its signers produce only widens what an attacker may try.

The ``http-message-signatures`` library (PyPI) was weighed and not taken: it adapts
``requests`` objects (a device has none, and the service has an ASGI scope), pulls
``http-sfv`` onto every device, and would still leave the nonce, window and replay checks
to us; this module is the ~100 lines that remain, tested exhaustively in
tests/bentos/test_httpsig.py (RFC 9421 Appendix B.2.6's Ed25519 example included).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bentoedge.bentos.errors import SignatureError

LABEL = "sig1"
COMPONENTS = ("@method", "@path", "content-digest")
ALG = "ed25519"
MAX_HEADER = 2048  # a Signature-Input or Signature longer than this is refused unread

_LABEL_RE = r"[a-z*][a-z0-9_.*-]{0,63}"
_STRING_RE = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'  # an sf-string without escapes
_INT_RE = r"-?[0-9]{1,15}"
_PARAM_RE = re.compile(rf";([a-z*][a-z0-9_.*-]{{0,63}})=({_STRING_RE}|{_INT_RE})")
_INPUT_RE = re.compile(rf"\A\s*({_LABEL_RE})=(\((?:{_STRING_RE}(?: {_STRING_RE})*)?\)(?:{_PARAM_RE.pattern})*)\s*\Z")
_SIG_RE = re.compile(rf"\A\s*({_LABEL_RE})=:([A-Za-z0-9+/]*={{0,2}}):\s*\Z")
_DIGEST_RE = re.compile(r"\A\s*sha-256=:([A-Za-z0-9+/]{43}=):\s*\Z")
_STRING_PARAMS = {"nonce", "keyid", "alg", "tag"}
_INT_PARAMS = {"created", "expires"}


@dataclass(frozen=True)
class Parsed:
    """A request's one signature, parsed: what it covers, its parameters, its bytes."""

    label: str
    components: tuple[str, ...]
    params_text: str  # the inner list and its parameters exactly as sent: part of the base
    created: int
    nonce: str
    keyid: str
    expires: int | None
    signature: bytes


def content_digest(body: bytes) -> str:
    """The Content-Digest field value (RFC 9530) of ``body``: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def digest_matches(field: str | None, body: bytes) -> bool:
    """Whether a Content-Digest field is exactly one sha-256 member equal to the body's."""
    m = _DIGEST_RE.match(field or "")
    if not m:
        return False
    return hmac.compare_digest(base64.b64decode(m.group(1)), hashlib.sha256(body).digest())


def signature_base(components: Sequence[str], values: Mapping[str, str], params_text: str) -> bytes:
    """The bytes that are signed (RFC 9421 section 2.5)."""
    lines = [f'"{c}": {values[c]}' for c in components]
    lines.append(f'"@signature-params": {params_text}')
    return "\n".join(lines).encode("ascii")


def params_text(created: int, nonce: str, keyid: str, components: Sequence[str] = COMPONENTS) -> str:
    inner = " ".join(f'"{c}"' for c in components)
    return f'({inner});created={created};nonce="{nonce}";keyid="{keyid}";alg="{ALG}"'


def sign(key: Ed25519PrivateKey, keyid: str, method: str, path: str, body: bytes, created: int,
         nonce: str) -> dict[str, str]:
    """The three headers that sign one request (Content-Digest, Signature-Input, Signature)."""
    for name, value in (("keyid", keyid), ("nonce", nonce)):
        if not re.fullmatch(_STRING_RE, f'"{value}"'):
            raise SignatureError(f"a signature {name} must be printable ASCII without quotes or backslashes")
    digest = content_digest(body)
    text = params_text(created, nonce, keyid)
    base = signature_base(COMPONENTS, {"@method": method.upper(), "@path": path, "content-digest": digest}, text)
    sig = base64.b64encode(key.sign(base)).decode()
    return {"Content-Digest": digest, "Signature-Input": f"{LABEL}={text}", "Signature": f"{LABEL}=:{sig}:"}


def parse(signature_input: str, signature: str) -> Parsed:
    """The one signature of a request; SignatureError when the headers are outside the subset."""
    if len(signature_input) > MAX_HEADER or len(signature) > MAX_HEADER:
        raise SignatureError("the signature headers are too long")
    m = _INPUT_RE.match(signature_input)
    s = _SIG_RE.match(signature)
    if not m or not s:
        raise SignatureError("Signature-Input or Signature is not one RFC 9421 signature this service reads")
    if m.group(1) != s.group(1):
        raise SignatureError("Signature-Input and Signature name different signatures")
    text = m.group(2)
    inner, _, _ = text.partition(")")
    components = tuple(c.strip('"') for c in inner[1:].split(" ") if c)
    if sorted(components) != sorted(COMPONENTS):
        raise SignatureError(f"the signature must cover exactly {', '.join(COMPONENTS)}")
    params: dict[str, str] = {}
    for key, value in _PARAM_RE.findall(text[len(inner) + 1:]):
        if key in params:
            raise SignatureError(f"signature parameter {key} appears twice")
        if key in _STRING_PARAMS and not value.startswith('"') or key in _INT_PARAMS and value.startswith('"'):
            raise SignatureError(f"signature parameter {key} has the wrong type")
        if key not in _STRING_PARAMS | _INT_PARAMS:
            raise SignatureError(f"signature parameter {key} is not one this service reads")
        params[key] = value.strip('"')
    missing = [k for k in ("created", "nonce", "keyid") if not params.get(k)]
    if missing:
        raise SignatureError(f"the signature lacks {', '.join(missing)}")
    if params.get("alg", ALG) != ALG:
        raise SignatureError(f"signature algorithm {params['alg']!r} is not {ALG}")
    try:
        raw = base64.b64decode(s.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the Signature value is not base64") from None
    if len(raw) != 64:
        raise SignatureError("an Ed25519 signature is 64 bytes")
    return Parsed(m.group(1), components, text, int(params["created"]), params["nonce"], params["keyid"],
                  int(params["expires"]) if "expires" in params else None, raw)


def verify(parsed: Parsed, public: bytes, method: str, path: str, digest_field: str) -> None:
    """Check the signature over this request's components; SignatureError when it fails."""
    values = {"@method": method.upper(), "@path": path, "content-digest": digest_field.strip()}
    base = signature_base(parsed.components, values, parsed.params_text)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(parsed.signature, base)
    except (InvalidSignature, ValueError):
        raise SignatureError("the request signature does not verify") from None
