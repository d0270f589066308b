//! Who may send spans: with a token configured, every export must carry
//! `authorization: Bearer TOKEN` (gRPC metadata or HTTP header). The check
//! reads the request's headers only, before its body is read or decoded.

use std::sync::Arc;

/// The token exports must carry, if any.
#[derive(Clone, Default)]
pub struct Auth {
    /// `Bearer TOKEN`.
    authorization: Option<Arc<str>>,
}

impl Auth {
    pub fn new(token: Option<String>) -> Self {
        Self {
            authorization: token.map(|t| format!("Bearer {t}").into()),
        }
    }

    /// Whether a request with this `authorization` value may come in.
    pub fn allows(&self, given: Option<&[u8]>) -> bool {
        let Some(want) = &self.authorization else {
            return true;
        };
        given.is_some_and(|g| {
            // Same time whatever the first differing byte.
            g.len() == want.len()
                && g.iter()
                    .zip(want.as_bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_passes() {
        assert!(Auth::new(None).allows(None));
        let a = Auth::new(Some("s3cret".into()));
        assert!(a.allows(Some(b"Bearer s3cret")));
        for bad in [&b"Bearer s3creT"[..], b"Bearer s3cret ", b"s3cret", b""] {
            assert!(!a.allows(Some(bad)), "{bad:?}");
        }
        assert!(!a.allows(None));
    }
}
