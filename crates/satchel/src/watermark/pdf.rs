//! PDF marks as an incremental update (ISO 32000-1 §7.5.6): the buyer's file is the
//! seller's original, byte for byte, followed by a short tail that redefines each page
//! (a visible stamp at the foot, plus the signed mark as invisible text) and the document
//! information dictionary (the signed mark again, under `/SatchelMark`). Nothing is
//! re-encoded, so the tail is computed once per buyer and streamed after the original.

use lopdf::{Dictionary, Document, IncrementalDocument, Object, ObjectId, Stream};

use super::{Mark, WatermarkError};

/// Largest PDF we load into memory to compute a mark (the tail itself stays small).
pub const MAX_PDF_BYTES: usize = 512 * 1024 * 1024;

/// A PDF literal string of printable ASCII (other characters become `?`).
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('(');
    for c in s.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push(')');
    out
}

fn resolve<'a>(doc: &'a Document, o: &'a Object) -> Option<&'a Object> {
    doc.dereference(o).ok().map(|(_, o)| o)
}

/// A page attribute, inherited from the page tree when the page does not set it.
fn inherited<'a>(doc: &'a Document, page: ObjectId, key: &[u8]) -> Option<&'a Object> {
    let mut id = page;
    for _ in 0..64 {
        let dict = doc.get_dictionary(id).ok()?;
        if let Ok(v) = dict.get(key) {
            return resolve(doc, v);
        }
        id = dict.get(b"Parent").and_then(Object::as_reference).ok()?;
    }
    None
}

fn media_box(doc: &Document, page: ObjectId) -> (f32, f32, f32) {
    let nums: Vec<f32> = inherited(doc, page, b"MediaBox")
        .and_then(|o| o.as_array().ok())
        .map(|a| {
            a.iter()
                .filter_map(|v| resolve(doc, v))
                .filter_map(|v| v.as_float().ok())
                .collect()
        })
        .unwrap_or_default();
    match nums.as_slice() {
        [x0, y0, x1, _] => (*x0, *y0, (x1 - x0).abs()),
        _ => (0.0, 0.0, 612.0),
    }
}

/// The tail to append to `original` so it carries `mark`.
pub fn overlay(original: &[u8], mark: &Mark) -> Result<Vec<u8>, WatermarkError> {
    if original.len() > MAX_PDF_BYTES {
        return Err(WatermarkError::Unsupported("PDF larger than 512 MiB"));
    }
    let prev = Document::load_mem(original).map_err(|e| WatermarkError::Malformed(format!("PDF: {e}")))?;
    if prev.is_encrypted() || prev.trailer.has(b"Encrypt") {
        return Err(WatermarkError::Unsupported("encrypted PDF"));
    }
    let pages: Vec<ObjectId> = prev.get_pages().into_values().collect();
    if pages.is_empty() {
        return Err(WatermarkError::Malformed("PDF has no pages".into()));
    }
    // Per page: the effective resources with our font added, and the contents wrapped.
    let mut plans = Vec::with_capacity(pages.len());
    for &page in &pages {
        let mut resources = inherited(&prev, page, b"Resources")
            .and_then(|o| o.as_dict().ok())
            .cloned()
            .unwrap_or_default();
        let mut fonts = resources
            .get(b"Font")
            .ok()
            .and_then(|o| resolve(&prev, o))
            .and_then(|o| o.as_dict().ok())
            .cloned()
            .unwrap_or_default();
        let contents: Vec<Object> = match prev.get_dictionary(page).ok().and_then(|d| d.get(b"Contents").ok()) {
            Some(Object::Array(a)) => a.clone(),
            Some(o @ Object::Reference(_)) => match resolve(&prev, o) {
                Some(Object::Array(a)) => a.clone(),
                _ => vec![o.clone()],
            },
            _ => Vec::new(),
        };
        fonts.remove(b"SatchelMark");
        resources.remove(b"Font");
        plans.push((page, resources, fonts, contents, media_box(&prev, page)));
    }
    let info = prev
        .trailer
        .get(b"Info")
        .ok()
        .and_then(|o| resolve(&prev, o))
        .and_then(|o| o.as_dict().ok())
        .cloned()
        .unwrap_or_default();

    let mut inc = IncrementalDocument::create_from(original.to_vec(), prev);
    let font_id = inc.new_document.add_object(Dictionary::from_iter(vec![
        ("Type", Object::Name(b"Font".to_vec())),
        ("Subtype", Object::Name(b"Type1".to_vec())),
        ("BaseFont", Object::Name(b"Helvetica".to_vec())),
        ("Encoding", Object::Name(b"WinAnsiEncoding".to_vec())),
    ]));
    let open_id = inc
        .new_document
        .add_object(Stream::new(Dictionary::new(), b"q\n".to_vec()));
    let stamp = mark.stamp_text();
    let visible = literal(&stamp);
    let hidden = literal(&mark.token);
    for (page, mut resources, mut fonts, contents, (x0, y0, width)) in plans {
        fonts.set("SatchelMark", Object::Reference(font_id));
        resources.set("Font", Object::Dictionary(fonts));
        // Fit the stamp to the page width (Helvetica averages about half an em per character).
        #[allow(clippy::cast_precision_loss)]
        let len = stamp.chars().count().max(1) as f32;
        let size = ((width - 72.0) / (len * 0.5)).clamp(4.0, 8.0);
        // `Q` closes the `q` that opens the page, so the original's graphics state (whatever
        // it left unbalanced) cannot move or hide the stamp.
        let body = format!(
            "Q\nq\nBT /SatchelMark {size:.1} Tf 0.45 0.45 0.45 rg 1 0 0 1 {:.1} {:.1} Tm {visible} Tj ET\n\
             BT 3 Tr /SatchelMark 1 Tf 1 0 0 1 {:.1} {:.1} Tm {hidden} Tj ET\nQ\n",
            x0 + 36.0,
            y0 + 14.0,
            x0 + 2.0,
            y0 + 2.0,
        );
        let stamp_id = inc
            .new_document
            .add_object(Stream::new(Dictionary::new(), body.into_bytes()));
        let mut all = Vec::with_capacity(contents.len() + 2);
        all.push(Object::Reference(open_id));
        all.extend(contents);
        all.push(Object::Reference(stamp_id));
        inc.opt_clone_object_to_new_document(page)
            .map_err(|e| WatermarkError::Malformed(format!("PDF page: {e}")))?;
        let dict = inc
            .new_document
            .get_object_mut(page)
            .and_then(Object::as_dict_mut)
            .map_err(|e| WatermarkError::Malformed(format!("PDF page: {e}")))?;
        dict.set("Resources", Object::Dictionary(resources));
        dict.set("Contents", Object::Array(all));
    }
    let mut info = info;
    info.set("SatchelMark", Object::string_literal(mark.token.clone()));
    let info_id = inc.new_document.add_object(info);
    inc.new_document.trailer.set("Info", Object::Reference(info_id));
    let mut out = SkipWriter {
        skip: original.len(),
        buf: Vec::with_capacity(4096),
    };
    inc.save_to(&mut out)
        .map_err(|e| WatermarkError::Malformed(format!("PDF write: {e}")))?;
    Ok(out.buf)
}

/// A writer that drops the first `skip` bytes (the original, which we do not copy again).
struct SkipWriter {
    skip: usize,
    buf: Vec<u8>,
}

impl std::io::Write for SkipWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let dropped = self.skip.min(data.len());
        self.skip -= dropped;
        self.buf.extend_from_slice(&data[dropped..]);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
