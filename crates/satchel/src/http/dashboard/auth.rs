//! Sign-in and sign-out: the same session as `POST /api/v1/auth/login`.
//!
//! The sign-in form has no session to carry a CSRF token, so it uses the storefront's
//! double-submit cookie (`satchel_csrf`): a cross-site page cannot read it, so it cannot
//! sign a victim into the attacker's account (login CSRF).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{render_status, see_other, Dash, DashForm, Errors};
use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::http::pages::{csrf_ok, csrf_token};

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    store_name: String,
    csrf: String,
    next: String,
    email: String,
    errors: Errors,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NextQuery {
    next: String,
}

/// Only dashboard paths: never an open redirect.
fn safe_next(next: &str) -> String {
    let ok = next.starts_with("/dashboard")
        && !next.starts_with("/dashboard/login")
        && !next.contains("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if ok {
        next.to_string()
    } else {
        "/dashboard".to_string()
    }
}

pub async fn login_page(State(app): State<App>, headers: HeaderMap, Query(q): Query<NextQuery>) -> ApiResult<Response> {
    if Dash::from_headers(&app, &headers).await?.is_some() {
        return Ok(see_other(&safe_next(&q.next)));
    }
    let (csrf, set) = csrf_token(&headers);
    let page = LoginPage {
        store_name: crate::http::pages::brand(&app).await.store_name,
        csrf,
        next: safe_next(&q.next),
        email: String::new(),
        errors: Errors::default(),
    };
    let mut resp = render_status(StatusCode::OK, &page)?;
    if let Some(v) = set {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    csrf: String,
    next: String,
    email: String,
    password: String,
}

pub async fn login(
    State(app): State<App>,
    headers: HeaderMap,
    DashForm(f): DashForm<LoginForm>,
) -> ApiResult<Response> {
    if !csrf_ok(&headers, &f.csrf) {
        return Err(super::csrf_refused());
    }
    let mut errors = Errors::default();
    if f.email.trim().is_empty() {
        errors.add("email", "Enter the email address you sign in with.");
    }
    if f.password.is_empty() {
        errors.add("password", "Enter your password.");
    }
    if errors.is_empty() {
        match crate::auth::login(&app, &f.email, &f.password).await {
            Ok(user) => {
                let (cookie, _csrf) = crate::auth::create_session(&app, &user.id).await?;
                let mut resp = see_other(&safe_next(&f.next));
                resp.headers_mut().append(
                    header::SET_COOKIE,
                    HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.into()))?,
                );
                return Ok(resp);
            }
            Err(ApiError::Client { code, message, .. }) => {
                errors.general = Some(super::capitalize(&message));
                if code != "seller_suspended" {
                    errors.add("password", "Check your email and password, then try again.");
                }
            }
            Err(e) => return Err(e),
        }
    }
    let page = LoginPage {
        store_name: crate::http::pages::brand(&app).await.store_name,
        csrf: f.csrf,
        next: safe_next(&f.next),
        email: f.email,
        errors,
    };
    let status = if page.errors.general.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render_status(status, &page)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CsrfOnly {
    pub csrf: String,
}

pub async fn logout(
    State(app): State<App>,
    dash: Dash,
    headers: HeaderMap,
    DashForm(f): DashForm<CsrfOnly>,
) -> ApiResult<Response> {
    dash.check_csrf(&f.csrf)?;
    crate::auth::logout(
        &app,
        crate::auth::cookie(&headers, crate::auth::SESSION_COOKIE).as_deref(),
    )
    .await?;
    let mut resp = see_other("/dashboard/login");
    let clear = format!(
        "{}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
        crate::auth::SESSION_COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp.into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_is_never_an_open_redirect() {
        assert_eq!(super::safe_next("/dashboard/orders?q=a"), "/dashboard/orders?q=a");
        assert_eq!(super::safe_next("https://evil.example"), "/dashboard");
        assert_eq!(super::safe_next("/dashboard//evil.example"), "/dashboard");
        assert_eq!(super::safe_next("//evil.example"), "/dashboard");
        assert_eq!(super::safe_next("/dashboard/login"), "/dashboard");
    }
}
