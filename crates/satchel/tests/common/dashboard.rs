//! The seller dashboard over plain HTTP: sign in through the login form (CSRF cookie and
//! field), then read pages and post forms as that session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use satchel::testing::TestApp;

/// A signed-in dashboard session: the cookie header and the session's CSRF token.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

pub fn cookie_value(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.strip_prefix(&format!("{name}="))
                .map(|rest| rest.split(';').next().unwrap().to_string())
        })
}

/// The value of the first `name="csrf"` hidden input in a page.
pub fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

pub async fn login(t: &TestApp, email: &str, password: &str) -> Session {
    let r = t.client.get(t.url("/dashboard/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let pre = cookie_value(&r, "satchel_csrf").expect("login page mints a CSRF cookie");
    let html = r.text().await.unwrap();
    assert_eq!(csrf_in(&html), pre);
    let r = t
        .client
        .post(t.url("/dashboard/login"))
        .header("cookie", format!("satchel_csrf={pre}"))
        .form(&[
            ("csrf", pre.as_str()),
            ("email", email),
            ("password", password),
            ("next", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "sign-in redirects");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"), "{set}");
    let token = cookie_value(&r, "satchel_session").expect("session cookie");
    let cookie = format!("satchel_session={token}");
    let html = t
        .client
        .get(t.url("/dashboard/settings"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Session {
        csrf: csrf_in(&html),
        cookie,
    }
}

pub async fn get(t: &TestApp, s: &Session, path: &str) -> (u16, String) {
    let r = t
        .client
        .get(t.url(path))
        .header("cookie", &s.cookie)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub async fn post_form(t: &TestApp, s: &Session, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    t.client
        .post(t.url(path))
        .header("cookie", &s.cookie)
        .header("accept", "text/html")
        .form(form)
        .send()
        .await
        .unwrap()
}
