//! Markdown to safe HTML. Raw HTML in the source is shown as text (never interpreted), and
//! links or images with a script-capable scheme lose their target, so a product description
//! can never inject script into the store.

use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag};

fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        // No scheme (relative link, fragment) — unless the "scheme" is really a path segment.
        None => true,
        Some((scheme, _)) if scheme.contains('/') || scheme.contains('?') || scheme.contains('#') => true,
        Some((scheme, _)) => matches!(scheme, "http" | "https" | "mailto"),
    }
}

pub fn to_html(md: &str) -> String {
    let parser = Parser::new_ext(
        md,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS,
    )
    .map(|ev| match ev {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe_url(&dest_url) => Event::Start(Tag::Link {
            link_type,
            dest_url: CowStr::from("#"),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe_url(&dest_url) => Event::Start(Tag::Image {
            link_type,
            dest_url: CowStr::from(""),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::new();
    html::push_html(&mut out, parser);
    out
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn script_is_inert() {
        let html = to_html("Hi <script>alert(1)</script> <img src=x onerror=alert(1)>\n\n[x](javascript:alert(1)) ![y](data:text/html,boom)");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("data:text"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    #[test]
    fn ordinary_markdown_renders() {
        let html = to_html("# Title\n\n**bold** [site](https://example.com/a)");
        assert!(
            html.contains("<h1>Title</h1>")
                && html.contains("<strong>bold</strong>")
                && html.contains("href=\"https://example.com/a\"")
        );
    }
}
