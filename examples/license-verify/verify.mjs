#!/usr/bin/env node
// Verify a Satchel license certificate (and optionally a signed validation answer) offline
// with Node's built-in crypto — no npm packages. Formats: docs/licensing.md.
//
// usage: node verify.mjs PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP]
//                        [--response ANSWER_FILE --nonce N] [--now UNIX_SECONDS]
//
// Prints the verdict on stdout: "OK <license_id>" (exit 0) or "FAILED <reason>" (exit 1);
// bad usage exits 2.
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const PREFIX = "SCRT1.";
// Ed25519 public keys as SPKI DER: a fixed 12-byte prefix + the 32 raw bytes.
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

// Strict base64url without padding (what the server writes, nothing else).
function b64url(s) {
  const raw = typeof s === "string" ? Buffer.from(s, "base64url") : null;
  if (raw === null || raw.toString("base64url") !== s) throw new Error("malformed base64url");
  return raw;
}

// Map kid -> public key from the public-keys document ("items", or "keys").
export function loadKeys(text) {
  const doc = JSON.parse(text);
  const entries = doc.items ?? doc.keys;
  if (!Array.isArray(entries)) throw new Error("malformed public keys document");
  const keys = new Map();
  for (const e of entries) {
    if (e.alg !== "Ed25519") continue;
    const raw = b64url(e.public_key);
    if (raw.length !== 32) throw new Error("malformed public key");
    keys.set(e.kid, createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: "der", type: "spki" }));
  }
  return keys;
}

function checkSignature(keys, kid, message, signature) {
  const key = keys.get(kid);
  if (!key) throw new Error(`unknown key id ${JSON.stringify(kid)}: refresh the public keys`);
  if (!verify(null, Buffer.from(message, "ascii"), key, b64url(signature))) {
    throw new Error("bad signature: not issued by the store, or altered");
  }
}

export const fingerprintHash = (fp) => createHash("sha256").update(fp.trim(), "utf8").digest("hex");

export function verifyCertificate(cert, keys, now, fingerprint) {
  cert = cert.trim();
  if (!cert.startsWith(PREFIX)) throw new Error("not a Satchel certificate (expected SCRT1.)");
  const rest = cert.slice(PREFIX.length);
  const dot = rest.indexOf(".");
  if (dot < 0) throw new Error("malformed certificate");
  const claimsB64 = rest.slice(0, dot);
  const claims = JSON.parse(b64url(claimsB64).toString("utf8"));
  if (claims === null || typeof claims !== "object" || Array.isArray(claims)) {
    throw new Error("malformed certificate claims");
  }
  // The signature covers the ASCII text before the last dot: never re-serialize the JSON.
  checkSignature(keys, claims.kid, PREFIX + claimsB64, rest.slice(dot + 1));
  if (claims.v !== 1) throw new Error("unsupported certificate version");
  if (claims.expires_at != null) {
    if (!Number.isInteger(claims.expires_at)) throw new Error("malformed certificate expires_at");
    if (claims.expires_at <= now) throw new Error("certificate expired");
  }
  if (fingerprint !== undefined && claims.fingerprint !== fingerprintHash(fingerprint)) {
    throw new Error("certificate is for another device");
  }
  return claims;
}

// The signed body of a validation answer; `nonce` is what you sent (undefined if nothing).
export function verifyResponse(answerText, keys, nonce) {
  const answer = JSON.parse(answerText);
  if (typeof answer.signed_payload !== "string" || typeof answer.signature !== "string") {
    throw new Error("malformed answer");
  }
  checkSignature(keys, answer.kid, answer.signed_payload, answer.signature);
  const body = JSON.parse(b64url(answer.signed_payload).toString("utf8")); // trust only this
  if (body === null || typeof body !== "object") throw new Error("malformed answer body");
  if ((body.nonce ?? null) !== (nonce ?? null)) throw new Error("nonce mismatch: a replayed or faked answer");
  return body;
}

function main(argv) {
  const [keysPath, certPath, ...rest] = argv;
  const flags = ["--fingerprint", "--response", "--nonce", "--now"];
  const opts = {};
  for (let i = 0; i < rest.length; i += 2) opts[rest[i]] = rest[i + 1];
  const now = opts["--now"] !== undefined ? Number(opts["--now"]) : Math.floor(Date.now() / 1000);
  if (!certPath || rest.length % 2 !== 0 || Object.keys(opts).some((k) => !flags.includes(k)) || !Number.isInteger(now)) {
    console.error("usage: node verify.mjs PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP] [--response ANSWER_FILE --nonce N] [--now UNIX_SECONDS]");
    return 2;
  }
  try {
    const keys = loadKeys(readFileSync(keysPath, "utf8"));
    const claims = verifyCertificate(readFileSync(certPath, "utf8"), keys, now, opts["--fingerprint"]);
    if (opts["--response"] !== undefined) {
      const body = verifyResponse(readFileSync(opts["--response"], "utf8"), keys, opts["--nonce"]);
      if (body.valid !== true) throw new Error(`license not valid: ${body.code}`);
      if (body.license?.id !== claims.license_id) throw new Error("the answer is about another license");
    }
    console.log("OK", claims.license_id);
    return 0;
  } catch (e) {
    console.log("FAILED", e.message);
    return 1;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) process.exitCode = main(process.argv.slice(2));
