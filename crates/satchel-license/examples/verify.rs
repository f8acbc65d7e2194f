//! Verifies a Satchel license certificate (and optionally a signed validation answer) offline.
//!
//! ```sh
//! cargo run -p satchel-license --example verify -- PUBLIC_KEYS_JSON CERTIFICATE_FILE \
//!     [--fingerprint FP] [--response ANSWER_FILE --nonce N] [--now UNIX_SECONDS]
//! ```
//!
//! Prints the verdict on stdout — `OK <license_id>` (exit 0) or `FAILED <reason>` (exit 1);
//! bad usage exits 2 — the same contract as `examples/license-verify/verify.{py,mjs}`.

use std::process::ExitCode;

use satchel_license::{certificate, response, PublicKeys};

const USAGE: &str = "usage: verify PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP] [--response ANSWER_FILE --nonce N] [--now UNIX_SECONDS]";

#[derive(Default)]
struct Args {
    keys: String,
    cert: String,
    fingerprint: Option<String>,
    response: Option<String>,
    nonce: Option<String>,
    now: Option<i64>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Option<Args> {
    let mut args = Args {
        keys: argv.next()?,
        cert: argv.next()?,
        ..Args::default()
    };
    while let Some(flag) = argv.next() {
        let value = argv.next()?;
        match flag.as_str() {
            "--fingerprint" => args.fingerprint = Some(value),
            "--response" => args.response = Some(value),
            "--nonce" => args.nonce = Some(value),
            "--now" => args.now = Some(value.parse().ok()?),
            _ => return None,
        }
    }
    Some(args)
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

fn run(args: &Args) -> Result<String, String> {
    let keys = PublicKeys::from_json(&read(&args.keys)?).map_err(|e| e.to_string())?;
    let now = args.now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    });
    let cert = read(&args.cert)?;
    let claims = match &args.fingerprint {
        Some(fp) => certificate::verify_for_device(&cert, &keys, fp, now),
        None => certificate::verify_certificate(&cert, &keys, now),
    }
    .map_err(|e| e.to_string())?;
    if let Some(path) = &args.response {
        let body = response::verify_response(&read(path)?, &keys, args.nonce.as_deref()).map_err(|e| e.to_string())?;
        if !body.valid {
            return Err(format!("license not valid: {}", body.code));
        }
        if body.license.as_ref().map(|l| l.id.as_str()) != Some(claims.license_id.as_str()) {
            return Err("the answer is about another license".into());
        }
    }
    Ok(claims.license_id)
}

fn main() -> ExitCode {
    let Some(args) = parse_args(std::env::args().skip(1)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match run(&args) {
        Ok(license_id) => {
            println!("OK {license_id}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            println!("FAILED {reason}");
            ExitCode::FAILURE
        }
    }
}
