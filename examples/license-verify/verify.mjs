#!/usr/bin/env node
// Verify a Satchel license certificate (and optionally a signed validation answer) offline
// with Node's built-in crypto — no npm packages.
//
// usage: node verify.mjs PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP] [--response FILE --nonce N]
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

const b64url = (s) => Buffer.from(s, "base64url");
// Ed25519 public keys as SPKI DER: a fixed 12-byte prefix + the 32 raw bytes.
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

function loadKeys(path) {
  const doc = JSON.parse(readFileSync(path, "utf8"));
  const keys = new Map();
  for (const k of doc.items) {
    if (k.alg !== "Ed25519") continue;
    keys.set(k.kid, createPublicKey({ key: Buffer.concat([SPKI_PREFIX, b64url(k.public_key)]), format: "der", type: "spki" }));
  }
  return keys;
}

export function verifyCertificate(cert, keys, fingerprint, now = Math.floor(Date.now() / 1000)) {
  cert = cert.trim();
  if (!cert.startsWith("SCRT1.")) throw new Error("not a Satchel certificate (expected SCRT1.)");
  const dot = cert.lastIndexOf(".");
  const payload = cert.slice(0, dot);
  const claims = JSON.parse(b64url(payload.slice("SCRT1.".length)).toString("utf8"));
  const key = keys.get(claims.kid);
  if (!key) throw new Error(`unknown key id ${claims.kid}: refresh the public keys`);
  if (!verify(null, Buffer.from(payload, "ascii"), key, b64url(cert.slice(dot + 1)))) {
    throw new Error("bad signature: this certificate was not issued by the store");
  }
  if (claims.expires_at != null && claims.expires_at <= now) throw new Error("certificate expired");
  if (fingerprint !== undefined && claims.fingerprint !== createHash("sha256").update(fingerprint).digest("hex")) {
    throw new Error("certificate is for another device");
  }
  return claims;
}

export function verifyResponse(answer, keys, nonce) {
  const key = keys.get(answer.kid);
  if (!key) throw new Error("unknown key id");
  if (!verify(null, Buffer.from(answer.signed_payload, "ascii"), key, b64url(answer.signature))) {
    throw new Error("bad signature on the validation answer: not the real store");
  }
  const body = JSON.parse(b64url(answer.signed_payload).toString("utf8"));
  if (body.nonce !== nonce) throw new Error("nonce mismatch: a replayed answer");
  return body;
}

const [, , keysPath, certPath, ...rest] = process.argv;
if (!certPath) {
  console.log("usage: node verify.mjs PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP] [--response FILE --nonce N]");
  process.exit(2);
}
const opts = {};
for (let i = 0; i + 1 < rest.length; i += 2) opts[rest[i]] = rest[i + 1];
try {
  const keys = loadKeys(keysPath);
  const claims = verifyCertificate(readFileSync(certPath, "utf8"), keys, opts["--fingerprint"]);
  if (opts["--response"]) {
    const body = verifyResponse(JSON.parse(readFileSync(opts["--response"], "utf8")), keys, opts["--nonce"]);
    if (!body.valid) throw new Error(`license not valid: ${body.code}`);
  }
  console.log("OK", claims.license_id);
} catch (e) {
  console.log("FAILED", e.message);
  process.exit(1);
}
