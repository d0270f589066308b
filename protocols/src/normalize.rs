//! Bounded-cardinality operation names: identifiers in paths become placeholders.

/// `/orders/123/items/9f86d081884c7d65` -> `/orders/{id}/items/{hash}`.
pub fn normalize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(placeholder(seg).unwrap_or(seg));
    }
    out
}

fn placeholder(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        return None;
    }
    let digits = seg.bytes().filter(u8::is_ascii_digit).count();
    if digits == seg.len() {
        return Some("{id}");
    }
    if is_uuid(seg) {
        return Some("{uuid}");
    }
    if seg.len() >= 16 && seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some("{hash}");
    }
    // Long tokens mixing letters and digits (base64 ids, slugs with ids).
    if seg.len() >= 20
        && digits > 0
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Some("{id}");
    }
    None
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_identifiers() {
        assert_eq!(normalize_path("/orders/123"), "/orders/{id}");
        assert_eq!(
            normalize_path("/u/550e8400-e29b-41d4-a716-446655440000/x"),
            "/u/{uuid}/x"
        );
        assert_eq!(
            normalize_path("/blob/9f86d081884c7d659a2feaa0c55ad015"),
            "/blob/{hash}"
        );
        assert_eq!(normalize_path("/t/dGhpcyBpcyBhIHRva2VuMTIz"), "/t/{id}");
        assert_eq!(normalize_path("/v1/health"), "/v1/health");
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path(""), "");
    }
}
