//! The buyer's library: magic-link sign-in and the list of purchases.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::error::ApiResult;
use crate::http::extract::ApiJson;
use crate::library::BuyerAuth;

pub fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(request_link))
        .routes(routes!(consume_link))
        .routes(routes!(library))
        .routes(routes!(library_page))
        .routes(routes!(library_login_form))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    email: String,
}

/// Emails a single-use sign-in link (15 minutes) to a buyer. Always 202 with the same body,
/// so it reveals nothing about who bought here.
#[utoipa::path(post, path = "/api/v1/library/login", tag = "library", request_body = LinkRequest,
    responses((status = 202, description = "If this email bought here, a link is on its way"), (status = 422, description = "Malformed email")))]
async fn request_link(State(app): State<App>, ApiJson(req): ApiJson<LinkRequest>) -> ApiResult<Response> {
    crate::library::request_link(&app, &req.email).await?;
    let body = json!({"status": "accepted", "message": "If this email address bought something here, a sign-in link is on its way."});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Follows a sign-in link: starts a buyer session and continues to the library.
#[utoipa::path(get, path = "/auth/magic/{token}", tag = "library", params(("token" = String, Path)),
    responses((status = 303, description = "Signed in; on to /library"), (status = 401, description = "Used or expired link")))]
async fn consume_link(State(app): State<App>, Path(token): Path<String>) -> ApiResult<Response> {
    let cookie = crate::library::consume_link(&app, &token).await?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/library".to_string())],
    )
        .into_response())
}

/// Every purchase of the signed-in buyer: versions, files with sha256, downloads left, links, license keys and devices.
#[utoipa::path(get, path = "/api/v1/library", tag = "library",
    responses((status = 200, description = "`{email, items, next_cursor}`"), (status = 401, description = "Not signed in")))]
async fn library(State(app): State<App>, buyer: BuyerAuth) -> ApiResult<Json<Value>> {
    Ok(Json(crate::library::list(&app, &buyer).await?))
}

fn size(bytes: i64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} KB", b / 1e3)
    } else {
        format!("{bytes} bytes")
    }
}

const SIGN_IN_FORM: &str = "<form method=\"post\" action=\"/library/login\"><p><label for=\"email\">Email you bought with</label><br>\
<input id=\"email\" name=\"email\" type=\"email\" required autocomplete=\"email\"></p><button>Email me a sign-in link</button></form>";

/// The library page: purchases when signed in, the sign-in form otherwise.
#[utoipa::path(get, path = "/library", tag = "library", responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn library_page(State(app): State<App>, headers: axum::http::HeaderMap) -> ApiResult<Response> {
    use crate::http::pages::{esc, plain_page};
    let mut parts = axum::http::Request::new(()).into_parts().0;
    parts.headers = headers;
    let Ok(buyer) = <BuyerAuth as axum::extract::FromRequestParts<App>>::from_request_parts(&mut parts, &app).await
    else {
        return Ok(plain_page(&app, "Your library", &format!("<h1>Your library</h1><p>Sign in with the email address you bought with; we will email you a link.</p>{SIGN_IN_FORM}")).await?.into_response());
    };
    let lib = crate::library::list(&app, &buyer).await?;
    let mut body = format!("<h1>Your library</h1><p>Signed in as {}.</p>", esc(&buyer.email));
    let items = lib["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        body.push_str("<p>Nothing here yet.</p>");
    }
    for item in items {
        let title = esc(item["product"]["title"].as_str().unwrap_or_default());
        let badge = if item["updated"] == true {
            " <strong>· updated</strong>"
        } else {
            ""
        };
        body.push_str(&format!("<section><h2>{title}{badge}</h2>"));
        if let Some(v) = item["current_version"].as_object() {
            body.push_str(&format!(
                "<p>Version {}</p><ul>",
                esc(v["version"].as_str().unwrap_or_default())
            ));
            for f in v["files"].as_array().into_iter().flatten() {
                body.push_str(&format!(
                    "<li>{} · {} · <small>sha256 <code>{}</code></small></li>",
                    esc(f["name"].as_str().unwrap_or_default()),
                    size(f["size"].as_i64().unwrap_or(0)),
                    esc(f["sha256"].as_str().unwrap_or_default())
                ));
            }
            body.push_str("</ul>");
        }
        match (item["download_url"].as_str(), item["downloads"].as_object()) {
            (Some(url), Some(d)) => body.push_str(&format!(
                "<p><a href=\"{}\">Download</a> · {} of {} downloads left</p>",
                esc(url),
                d["remaining"],
                d["max"]
            )),
            (None, Some(_)) => body.push_str("<p>Downloads are no longer available for this purchase.</p>"),
            _ => {}
        }
        for l in item["licenses"].as_array().into_iter().flatten() {
            body.push_str(&format!(
                "<p>License key <code>{}</code> · {} · {} device(s)</p>",
                esc(l["key"].as_str().unwrap_or_default()),
                esc(l["status"].as_str().unwrap_or_default()),
                l["activations"]
            ));
        }
        body.push_str("</section>");
    }
    Ok(plain_page(&app, "Your library", &body).await?.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginForm {
    email: String,
}

/// The sign-in form's target: emails the link, then says so (the same page whatever the email).
#[utoipa::path(post, path = "/library/login", tag = "library", request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
async fn library_login_form(
    State(app): State<App>,
    axum::extract::Form(f): axum::extract::Form<LoginForm>,
) -> ApiResult<Response> {
    use crate::http::pages::plain_page;
    match crate::library::request_link(&app, &f.email).await {
        Ok(()) => Ok(plain_page(&app,
            "Check your email",
            "<h1>Check your email</h1><p>If this address bought something here, a sign-in link is on its way. It works once, for 15 minutes.</p>",
        ).await?
        .into_response()),
        Err(_) => Ok((StatusCode::UNPROCESSABLE_ENTITY, plain_page(&app, "Your library", &format!("<h1>Your library</h1><p>That does not look like an email address.</p>{SIGN_IN_FORM}")).await?).into_response()),
    }
}
