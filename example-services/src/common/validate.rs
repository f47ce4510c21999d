//! Owns input checks shared by several services: email addresses and pagination.

use serde::Deserialize;

use super::error::{ApiError, FieldError};

/// A plausible address: something before one `@`, a dotted domain after, no spaces.
pub fn email_ok(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !email.contains(char::is_whitespace)
                && email.len() <= 254
        }
        None => false,
    }
}

/// `?limit=&offset=` for list endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

impl Page {
    pub const MAX_LIMIT: u32 = 200;

    /// `(limit, offset)` as SQL parameters; limit defaults to 50, 1-200.
    pub fn bounds(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::validation(vec![FieldError {
                field: "limit",
                message: format!("must be between 1 and {}", Self::MAX_LIMIT),
            }]));
        }
        Ok((i64::from(limit), i64::from(self.offset.unwrap_or(0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last@sub.example.com"] {
            assert!(email_ok(ok), "{ok}");
        }
        for bad in [
            "", "a", "@b.co", "a@b", "a@.b", "a@b.", "a b@c.d", "a@b@c.d",
        ] {
            assert!(!email_ok(bad), "{bad}");
        }
    }

    #[test]
    fn pages() {
        let page = |limit, offset| Page { limit, offset };
        assert_eq!(page(None, None).bounds().unwrap(), (50, 0));
        assert_eq!(page(Some(200), Some(10)).bounds().unwrap(), (200, 10));
        assert!(page(Some(0), None).bounds().is_err());
        assert!(page(Some(201), None).bounds().is_err());
    }
}
