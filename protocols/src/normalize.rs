//! Bounded-cardinality, secret-free operation names: a request target
//! becomes its path alone, with identifiers and generated words templated.

/// The most bytes of a route kept (the rest is cut, marked `...`).
const MAX_ROUTE: usize = 256;
/// A segment longer than this is data, whatever it looks like.
const MAX_SEGMENT: usize = 64;

/// The route of a request target, which is all Tangle keeps of a URL: the
/// path, without scheme, host, userinfo, `;parameters`, query or fragment,
/// with every segment that looks like data templated.
///
/// `http://u:pw@host/orders/123;jsessionid=x?token=y` -> `/orders/{id}`.
pub fn route(target: &str) -> String {
    if target == "*" {
        return "*".into();
    }
    let path = if target.starts_with('/') {
        target
    } else if let Some((_, rest)) = target.split_once("://") {
        // Absolute form (proxies): the authority, userinfo included, goes.
        rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/")
    } else {
        // Authority form (CONNECT host:port): the host and port, no
        // userinfo; anything else that is not a path is cut as a path is.
        let host = target.split(['?', '#', '/']).next().unwrap_or_default();
        let mut authority = host.rsplit('@').next().unwrap_or(host).to_owned();
        crate::truncate_chars(&mut authority, MAX_SEGMENT);
        return authority;
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::with_capacity(path.len().min(MAX_ROUTE));
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let seg = seg.split(';').next().unwrap_or_default();
        out.push_str(placeholder(seg).unwrap_or(seg));
        if out.len() > MAX_ROUTE {
            crate::truncate_chars(&mut out, MAX_ROUTE);
            out.push_str("...");
            break;
        }
    }
    out
}

/// A free-form name (an instrumented app's span name) with what looks like
/// data taken out, word by word: no query or fragment, a word with a `/`
/// is a route, any other data-looking word a placeholder.
pub fn words(name: &str) -> String {
    let name = name.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::with_capacity(name.len().min(MAX_ROUTE));
    for w in name.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        if w.contains('/') {
            out.push_str(&route(w));
        } else {
            out.push_str(placeholder(w).unwrap_or(w));
        }
        if out.len() > MAX_ROUTE {
            crate::truncate_chars(&mut out, MAX_ROUTE);
            out.push_str("...");
            break;
        }
    }
    out
}

/// What a data-looking path segment is replaced by, if it is one.
fn placeholder(seg: &str) -> Option<&'static str> {
    if seg.is_empty() {
        return None;
    }
    let b = seg.as_bytes();
    // Most segments are short lowercase words (`orders`, `line-items`):
    // none of the rules below can call those data.
    if b.len() < 12
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || *c == b'-' || *c == b'_')
    {
        return None;
    }
    let count = |f: fn(&u8) -> bool| b.iter().filter(|c| f(c)).count();
    let digits = count(u8::is_ascii_digit);
    if digits == b.len() {
        return Some("{id}");
    }
    if is_uuid(b) {
        return Some("{uuid}");
    }
    // `@`, or `%40` (no allocation: this runs for every segment of every request).
    if b.iter()
        .enumerate()
        .any(|(i, &c)| c == b'@' || c == b'%' && b.get(i + 1..i + 3) == Some(b"40".as_slice()))
    {
        return Some("{email}");
    }
    if is_jwt(seg) {
        return Some("{token}");
    }
    if b.len() > MAX_SEGMENT
        || seg.contains('%')
        || b.iter().any(|c| c.is_ascii_control() || *c == b' ')
    {
        return Some("{value}");
    }
    let hex = b.iter().all(u8::is_ascii_hexdigit);
    if hex && (b.len() >= 16 || b.len() >= 7 && digits > 0 && digits < b.len()) {
        return Some("{hash}");
    }
    let token_chars = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || b"-_.~+=:".contains(c));
    let letters = count(u8::is_ascii_alphabetic);
    let mixed_case = count(u8::is_ascii_uppercase) > 0 && count(u8::is_ascii_lowercase) > 0;
    // Generated: ids with words around them (`order-12345`), random
    // strings (`a8Kx9q2z`); not version words (`v1beta1`, `oauth2`).
    if token_chars
        && b.len() >= 8
        && letters > 0
        && (digits >= 3 || digits > 0 && mixed_case)
        && !is_version(seg)
    {
        return Some("{id}");
    }
    // Random letters: long, with far fewer vowels than words have (a
    // quarter, where random letters have about that and words more).
    let vowels = count(|c| b"aeiouyAEIOUY".contains(c));
    if b.len() >= 12 && letters == b.len() && vowels * 4 < b.len() {
        return Some("{token}");
    }
    // Long base64 or base64url: keys, tokens, signatures.
    if b.len() >= 24
        && (mixed_case || digits > 0)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+/=-_".contains(c))
    {
        return Some("{token}");
    }
    None
}

/// `v1`, `v2beta1`, `v1alpha2`: API versions.
fn is_version(seg: &str) -> bool {
    let Some(rest) = seg.strip_prefix('v') else {
        return false;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest
        .strip_prefix("alpha")
        .or_else(|| rest.strip_prefix("beta"))
        .unwrap_or(rest);
    rest.bytes().all(|c| c.is_ascii_digit())
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A JSON Web Token: three base64url parts, the first a JSON object (`eyJ`).
fn is_jwt(seg: &str) -> bool {
    if !seg.starts_with("eyJ") {
        return false;
    }
    let parts: Vec<&str> = seg.split('.').collect();
    (parts.len() == 3 || parts.len() == 5)
        && parts.iter().take(2).all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_identifiers() {
        assert_eq!(route("/orders/123"), "/orders/{id}");
        assert_eq!(
            route("/u/550e8400-e29b-41d4-a716-446655440000/x"),
            "/u/{uuid}/x"
        );
        assert_eq!(
            route("/blob/9f86d081884c7d659a2feaa0c55ad015"),
            "/blob/{hash}"
        );
        assert_eq!(route("/commit/9f86d08"), "/commit/{hash}");
        assert_eq!(route("/t/dGhpcyBpcyBhIHRva2VuMTIz"), "/t/{id}");
        assert_eq!(route("/v1/health"), "/v1/health");
        assert_eq!(
            route("/apis/batch/v1beta1/jobs"),
            "/apis/batch/v1beta1/jobs"
        );
        assert_eq!(route("/oauth2callback"), "/oauth2callback");
        assert_eq!(route("/invite/qzjxwkfplmrtbvnc"), "/invite/{token}");
        assert_eq!(
            route("/docs/internationalization"),
            "/docs/internationalization"
        );
        assert_eq!(route("/orders/order-12345"), "/orders/{id}");
        assert_eq!(route("/r/a8Kx9q2z"), "/r/{id}");
        assert_eq!(route("/"), "/");
        assert_eq!(route(""), "");
    }

    #[test]
    fn span_names_lose_their_data() {
        assert_eq!(
            words("GET https://u:p@h/users/42?token=x"),
            "GET /users/{id}"
        );
        assert_eq!(
            words("send order-12345 to ann@example.com"),
            "send {id} to {email}"
        );
        assert_eq!(words("process payment"), "process payment");
    }

    #[test]
    fn nothing_but_the_path_is_kept() {
        assert_eq!(
            route("http://user:pw@shop.example:8080/orders/42;jsessionid=AB12?token=s3cret#frag"),
            "/orders/{id}"
        );
        assert_eq!(route("https://host"), "/");
        assert_eq!(route("/login;jsessionid=1A2B3C4D5E6F?next=/"), "/login");
        assert_eq!(route("CONNECT-target@db.internal:5432"), "db.internal:5432");
        assert_eq!(route("junk?token=s3cret#x"), "junk");
        assert_eq!(route("*"), "*");
        assert_eq!(route("/users/ann@example.com/cart"), "/users/{email}/cart");
        assert_eq!(route("/users/ann%40example.com"), "/users/{email}");
        assert_eq!(
            route(
                "/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
            ),
            "/reset/{token}"
        );
        assert_eq!(route("/keys/AbCdEfGhIjKlMnOpQrStUvWxYz"), "/keys/{token}");
        assert_eq!(route("/files/my%20doc.pdf"), "/files/{value}");
        let long = format!("/x/{}", "a".repeat(100));
        assert_eq!(route(&long), "/x/{value}");
        let many = "/a".repeat(500);
        let r = route(&many);
        assert!(r.len() <= MAX_ROUTE + 3 && r.ends_with("..."), "{r}");
    }
}
