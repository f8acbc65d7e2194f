//! `cargo run -p satchel-license --example verify -- PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP] [--response FILE --nonce N]`
//! prints `OK <license_id>` or the reason and exits 1 — the same contract as the Python and
//! JavaScript examples in `examples/license-verify/`.

use std::process::ExitCode;

fn run(args: &[String]) -> Result<String, String> {
    let keys = satchel_license::PublicKeys::from_json(&std::fs::read_to_string(&args[1]).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cert = std::fs::read_to_string(&args[2]).map_err(|e| e.to_string())?;
    let claims = satchel_license::verify_certificate(
        &cert,
        &keys,
        opt("--fingerprint"),
        i64::try_from(now).unwrap_or(i64::MAX),
    )
    .map_err(|e| e.to_string())?;
    if let Some(path) = opt("--response") {
        let answer: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let body = satchel_license::verify_response(&answer, &keys, opt("--nonce")).map_err(|e| e.to_string())?;
        if body["valid"] != true {
            return Err(format!("license not valid: {}", body["code"]));
        }
    }
    Ok(claims["license_id"].as_str().unwrap_or_default().to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: verify PUBLIC_KEYS_JSON CERTIFICATE_FILE [--fingerprint FP] [--response FILE --nonce N]");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(id) => {
            println!("OK {id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAILED {e}");
            ExitCode::FAILURE
        }
    }
}
