#!/usr/bin/env python3
"""Verify a Satchel license certificate (and optionally a signed validation answer) offline.

usage: verify.py PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP] [--response FILE --nonce N]

PUBLIC_KEYS_JSON is the body of GET /api/v1/licenses/public-keys, saved once and shipped with
your software. Needs the `cryptography` package. Prints "OK <license_id>" or the error (exit 1).
"""
import base64
import hashlib
import json
import sys
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def load_keys(path):
    with open(path) as f:
        doc = json.load(f)
    return {k["kid"]: Ed25519PublicKey.from_public_bytes(b64url(k["public_key"])) for k in doc["items"] if k["alg"] == "Ed25519"}


def verify_certificate(cert: str, keys, fingerprint=None, now=None):
    cert = cert.strip()
    if not cert.startswith("SCRT1."):
        raise ValueError("not a Satchel certificate (expected SCRT1.)")
    payload, _, sig = cert.rpartition(".")
    claims = json.loads(b64url(payload[len("SCRT1."):]))
    key = keys.get(claims.get("kid"))
    if key is None:
        raise ValueError("unknown key id %r: refresh the public keys" % claims.get("kid"))
    try:
        key.verify(b64url(sig), payload.encode("ascii"))
    except InvalidSignature:
        raise ValueError("bad signature: this certificate was not issued by the store")
    now = now or int(time.time())
    if claims.get("expires_at") is not None and claims["expires_at"] <= now:
        raise ValueError("certificate expired")
    if fingerprint is not None and claims["fingerprint"] != hashlib.sha256(fingerprint.encode()).hexdigest():
        raise ValueError("certificate is for another device")
    return claims


def verify_response(answer: dict, keys, nonce: str):
    key = keys.get(answer.get("kid"))
    if key is None:
        raise ValueError("unknown key id")
    try:
        key.verify(b64url(answer["signature"]), answer["signed_payload"].encode("ascii"))
    except InvalidSignature:
        raise ValueError("bad signature on the validation answer: not the real store")
    body = json.loads(b64url(answer["signed_payload"]))
    if body.get("nonce") != nonce:
        raise ValueError("nonce mismatch: a replayed answer")
    return body


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    keys = load_keys(argv[1])
    opts = dict(zip(argv[3::2], argv[4::2]))
    try:
        with open(argv[2]) as f:
            claims = verify_certificate(f.read(), keys, opts.get("--fingerprint"))
        if "--response" in opts:
            with open(opts["--response"]) as f:
                body = verify_response(json.load(f), keys, opts.get("--nonce"))
            if not body["valid"]:
                raise ValueError("license not valid: " + body["code"])
    except (ValueError, KeyError) as e:
        print("FAILED", e)
        return 1
    print("OK", claims["license_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
