#!/usr/bin/env python3
"""Verify a Satchel license certificate (and optionally a signed validation answer) offline.

usage: verify.py PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP]
                 [--response ANSWER_FILE --nonce N] [--now UNIX_SECONDS]

PUBLIC_KEYS_JSON is the body of GET /api/v1/licenses/public-keys, saved once and shipped with
your software. Needs the `cryptography` package. Prints the verdict on stdout: "OK <license_id>"
(exit 0) or "FAILED <reason>" (exit 1); bad usage exits 2. Formats: docs/licensing.md.
"""
import base64
import hashlib
import json
import sys
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PREFIX = "SCRT1."


class VerifyError(Exception):
    pass


def b64url(s: str) -> bytes:
    """Strict base64url without padding (what the server writes, nothing else)."""
    try:
        raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except ValueError:
        raw = None
    if raw is None or base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != s:
        raise VerifyError("malformed base64url")
    return raw


def load_keys(text: str) -> dict:
    """{kid: public key} from the public-keys document ("items", or "keys")."""
    doc = json.loads(text)
    entries = doc.get("items", doc.get("keys"))
    if not isinstance(entries, list):
        raise VerifyError("malformed public keys document")
    return {
        e["kid"]: Ed25519PublicKey.from_public_bytes(b64url(e["public_key"]))
        for e in entries
        if e.get("alg") == "Ed25519"
    }


def check_signature(keys: dict, kid, message: str, signature: str):
    key = keys.get(kid)
    if key is None:
        raise VerifyError("unknown key id %r: refresh the public keys" % (kid,))
    try:
        key.verify(b64url(signature), message.encode("ascii"))
    except InvalidSignature:
        raise VerifyError("bad signature: not issued by the store, or altered") from None


def fingerprint_hash(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.strip().encode("utf-8")).hexdigest()


def verify_certificate(cert: str, keys: dict, now: int, fingerprint=None) -> dict:
    cert = cert.strip()
    if not cert.startswith(PREFIX):
        raise VerifyError("not a Satchel certificate (expected SCRT1.)")
    claims_b64, dot, signature = cert[len(PREFIX):].partition(".")
    if not dot:
        raise VerifyError("malformed certificate")
    claims = json.loads(b64url(claims_b64))
    if not isinstance(claims, dict):
        raise VerifyError("malformed certificate claims")
    # The signature covers the ASCII text before the last dot: never re-serialize the JSON.
    check_signature(keys, claims.get("kid"), PREFIX + claims_b64, signature)
    if claims.get("v") != 1:
        raise VerifyError("unsupported certificate version")
    expires_at = claims.get("expires_at")
    if expires_at is not None:
        if type(expires_at) is not int:
            raise VerifyError("malformed certificate expires_at")
        if expires_at <= now:
            raise VerifyError("certificate expired")
    if fingerprint is not None and claims.get("fingerprint") != fingerprint_hash(fingerprint):
        raise VerifyError("certificate is for another device")
    return claims


def verify_response(answer_text: str, keys: dict, nonce) -> dict:
    """The signed body of a validation answer; `nonce` is what you sent (None if nothing)."""
    answer = json.loads(answer_text)
    signed = answer.get("signed_payload")
    if not isinstance(signed, str) or not isinstance(answer.get("signature"), str):
        raise VerifyError("malformed answer")
    check_signature(keys, answer.get("kid"), signed, answer["signature"])
    body = json.loads(b64url(signed))  # trust only this, never the answer's plain fields
    if not isinstance(body, dict):
        raise VerifyError("malformed answer body")
    if body.get("nonce") != nonce:
        raise VerifyError("nonce mismatch: a replayed or faked answer")
    return body


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def main(argv) -> int:
    flags = ("--fingerprint", "--response", "--nonce", "--now")
    opts = dict(zip(argv[3::2], argv[4::2]))
    if len(argv) < 3 or len(argv) % 2 == 0 or any(k not in flags for k in opts):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        keys = load_keys(read(argv[1]))
        now = int(opts.get("--now", time.time()))
        claims = verify_certificate(read(argv[2]), keys, now, opts.get("--fingerprint"))
        if "--response" in opts:
            body = verify_response(read(opts["--response"]), keys, opts.get("--nonce"))
            if body.get("valid") is not True:
                raise VerifyError("license not valid: %s" % body.get("code"))
            if (body.get("license") or {}).get("id") != claims.get("license_id"):
                raise VerifyError("the answer is about another license")
    except Exception as e:  # any failure means "not verified"
        print("FAILED", e)
        return 1
    print("OK", claims["license_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
