//! Small view helpers shared by the buyer-facing pages (library, reviews, affiliate portal):
//! dates in words, star ratings drawn with CSS classes (the CSP forbids inline styles), and
//! the one-line notices shown after a form redirects back.

use crate::reviews::Rating;

/// `1714694400` → "3 May 2024" (UTC).
pub fn date(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!("{} {} {}", d.day(), d.month(), d.year()),
        Err(_) => String::new(),
    }
}

/// `1714694400` → "3 May 2024" with the month short ("3 Sep 2024"), for tables and meta lines.
pub fn mid_date(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => {
            let m = d.month().to_string();
            format!("{} {} {}", d.day(), &m[..3.min(m.len())], d.year())
        }
        Err(_) => String::new(),
    }
}

/// `1714694400` → "3 May" (UTC), for compact tables and chart labels.
pub fn short_date(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => {
            let m = d.month().to_string();
            format!("{} {}", d.day(), &m[..3.min(m.len())])
        }
        Err(_) => String::new(),
    }
}

/// A star rating as the templates draw it: `class` fills the stars to the nearest half
/// (`r0`…`r50` in tenths), `label` is what a screen reader says.
#[derive(Debug, Clone)]
pub struct Stars {
    pub class: String,
    pub value: String,
    pub label: String,
    pub count: i64,
}

impl Stars {
    pub fn of_rating(r: &Rating) -> Option<Self> {
        if r.count == 0 {
            return None;
        }
        let half = (r.tenths + 2) / 5 * 5; // nearest half star, in tenths
        let value = format!("{}.{}", r.tenths / 10, r.tenths % 10);
        Some(Stars {
            class: format!("r{}", half.clamp(0, 50)),
            label: format!(
                "Rated {value} out of 5 from {} review{}",
                r.count,
                if r.count == 1 { "" } else { "s" }
            ),
            value,
            count: r.count,
        })
    }

    pub fn of_stars(n: i64) -> Self {
        let n = n.clamp(0, 5);
        Stars {
            class: format!("r{}", n * 10),
            value: n.to_string(),
            label: format!("{n} out of 5 stars"),
            count: 1,
        }
    }
}

/// The message for a `?done=` code after a form redirected back (only known codes are shown,
/// so nothing from the URL is ever echoed).
pub fn notice(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "deactivated" => "Device deactivated. Its seat is free for another device.",
        "canceled" => "Your subscription will end at the close of the paid period. You can resume it until then.",
        "resumed" => "Your subscription is back on. It renews as before.",
        "reviewed" => "Thanks! Your review is saved and shows on the product page.",
        "review_updated" => "Your review is updated.",
        "signed_out" => "You are signed out.",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_stars() {
        assert_eq!(date(1_714_694_400), "3 May 2024");
        assert_eq!(short_date(1_714_694_400), "3 May");
        assert_eq!(mid_date(1_725_321_600), "3 Sep 2024");
        let r = Rating {
            average: Some(4.3),
            count: 3,
            tenths: 43,
        };
        let s = Stars::of_rating(&r).unwrap();
        assert_eq!((s.class.as_str(), s.value.as_str()), ("r45", "4.3"));
        assert_eq!(s.label, "Rated 4.3 out of 5 from 3 reviews");
        assert_eq!(Stars::of_stars(2).class, "r20");
        assert!(Stars::of_rating(&Rating::default()).is_none());
        assert_eq!(notice(Some("<script>")), None);
    }
}
