//! RFC 7233 byte ranges for file delivery, with `If-Range`, `ETag` and `Last-Modified`.
//!
//! One range per request (a single range or a suffix range). A multi-range or malformed
//! `Range` header is ignored and the whole file is sent, as RFC 7233 §3.1 allows; a range
//! that starts past the end is a 416 with `Content-Range: bytes */size`. Bytes stream from
//! storage in 64 KiB chunks, so memory per download is bounded whatever the file size.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::db::models::FileRow;
use crate::error::ApiResult;

#[derive(Debug, PartialEq, Eq)]
pub enum RangeDecision {
    Full,
    Partial(u64, u64), // inclusive start, exclusive end
    Unsatisfiable,
}

/// Interprets a `Range` header value against a file of `size` bytes.
pub fn parse_range(value: &str, size: u64) -> RangeDecision {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        if !s.is_empty() && s.len() <= 20 && s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(0) => RangeDecision::Unsatisfiable,
            Some(n) if size == 0 => {
                let _ = n;
                RangeDecision::Unsatisfiable
            }
            Some(n) => RangeDecision::Partial(size.saturating_sub(n), size),
            None => RangeDecision::Full,
        },
        (false, true) => match num(a) {
            Some(s) if s < size => RangeDecision::Partial(s, size),
            Some(_) => RangeDecision::Unsatisfiable,
            None => RangeDecision::Full,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s > e => RangeDecision::Full, // syntactically invalid: ignore
            (Some(s), Some(_)) if s >= size => RangeDecision::Unsatisfiable,
            (Some(s), Some(e)) => RangeDecision::Partial(s, e.min(size - 1) + 1),
            _ => RangeDecision::Full,
        },
        (true, true) => RangeDecision::Full,
    }
}

pub fn etag(f: &FileRow) -> String {
    format!("\"{}\"", &f.sha256[..f.sha256.len().min(32)])
}

/// `attachment; filename="ascii"; filename*=UTF-8''percent-encoded` (RFC 6266).
pub fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Characters of an object key kept as they are in `X-Accel-Redirect` (unreserved, and `/`).
const ACCEL_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Hands `file` to nginx: an empty 200 with `X-Accel-Redirect: {prefix}{percent-encoded key}`.
/// nginx keeps our `Content-Type`, `Content-Disposition` and `Cache-Control` and serves the
/// bytes (ranges, If-Range, sendfile) from its `internal` location over the storage root.
pub fn x_accel(app: &App, file: &FileRow) -> Response {
    let target = format!(
        "{}{}",
        app.cfg.delivery.x_accel_prefix,
        percent_encoding::utf8_percent_encode(&file.object_key, ACCEL_KEEP)
    );
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&target) {
        h.insert("x-accel-redirect", v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&file.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&file.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-transform"));
    r
}

/// Serves `file` — or, for a watermarked purchase, the buyer's `marked` version of it.
pub async fn serve(
    app: &App,
    file: &FileRow,
    marked: Option<&crate::watermark::Composite>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let size = marked.map_or(u64::try_from(file.size).unwrap_or(0), crate::watermark::Composite::size);
    let tag = marked.map_or_else(|| etag(file), |m| format!("\"{}\"", m.tag));
    // The body stream, and for a plain local file the open file region the front may send
    // with sendfile(2) instead (a response extension; see `http::front`).
    let body = |range: Option<std::ops::Range<u64>>| async move {
        let r = match marked {
            Some(m) => Response::new(Body::from_stream(
                m.stream(&app.storage, range.unwrap_or(0..size)).await?,
            )),
            None => {
                let g = app.storage.get(&file.object_key, range).await?;
                let mut r = Response::new(Body::from_stream(g.body));
                if let Some(region) = g.region {
                    r.extensions_mut().insert(region);
                }
                r
            }
        };
        Ok::<_, crate::error::ApiError>(r)
    };
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(file.created_at).unwrap_or(0)),
    );
    // If-Range: honour the Range only when the validator still matches (strong ETag or exact date).
    let range_applies = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) if v.starts_with('"') => v == tag,
        Some(v) => v == last_modified,
    };
    let decision = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if range_applies => parse_range(r, size),
        _ => RangeDecision::Full,
    };
    let mut resp = match decision {
        RangeDecision::Unsatisfiable => {
            let mut r = crate::error::ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("The file has {size} bytes; ask for a range that starts before its end."),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        RangeDecision::Full => {
            let mut r = body(None).await?;
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            r
        }
        RangeDecision::Partial(start, end) => {
            let mut r = body(Some(start..end)).await?;
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&file.name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&file.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-transform"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_7233() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeDecision::Partial(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), RangeDecision::Partial(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), RangeDecision::Partial(90, 100));
        assert_eq!(parse_range("bytes=-500", 100), RangeDecision::Partial(0, 100));
        assert_eq!(parse_range("bytes=50-5000", 100), RangeDecision::Partial(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), RangeDecision::Unsatisfiable);
        assert_eq!(parse_range("bytes=200-300", 100), RangeDecision::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeDecision::Unsatisfiable);
        assert_eq!(
            parse_range("bytes=9-3", 100),
            RangeDecision::Full,
            "reversed is invalid: ignored"
        );
        assert_eq!(
            parse_range("bytes=0-1,5-6", 100),
            RangeDecision::Full,
            "multi-range: whole file"
        );
        assert_eq!(parse_range("items=0-1", 100), RangeDecision::Full);
        assert_eq!(parse_range("bytes=abc", 100), RangeDecision::Full);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 100), RangeDecision::Full);
    }

    #[test]
    fn disposition_keeps_utf8_names() {
        let cd = content_disposition("Böok \"1\".pdf");
        assert!(cd.starts_with("attachment; filename=\"B_ok _1_.pdf\""), "{cd}");
        assert!(cd.contains("filename*=UTF-8''B%C3%B6ok%20%221%22%2Epdf"), "{cd}");
    }
}
