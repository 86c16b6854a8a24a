//! Paging of the list RPCs (ListListeners, GetStats) in the way of Google's
//! AIP-158: a `page_size` (0 = [`DEFAULT_PAGE_SIZE`], capped at
//! [`MAX_PAGE_SIZE`], negative refused) and an opaque `page_token`.
//!
//! Listeners are kept sorted by name, so a token is simply the last name of
//! the previous page: the next page starts strictly after it. That makes a
//! token valid forever and cheap to resume (a range lookup in the
//! registry's ordered map), and a listener added or removed between pages
//! can never make another one appear twice or be skipped. The token is
//! hex-encoded with a version prefix so that clients treat it as opaque and
//! a later layout can tell old tokens apart.

use tonic::Status;

/// Listeners per page when the client asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// The most listeners per page; larger requests are served this many
/// (AIP-158 coerces rather than refuses). A page of 1000 full listeners is
/// well under the 4 MiB default message limit.
pub const MAX_PAGE_SIZE: usize = 1000;

const TOKEN_PREFIX: &str = "n1:";
/// Longer than any token netd hands out (prefix + a 63-character name, hex).
const MAX_TOKEN_LEN: usize = 2 * (3 + 64);

/// One page request, validated: how many, and after which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub size: usize,
    pub after: Option<String>,
}

impl Page {
    /// Validate `page_size` and `page_token` as they came in a request.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Page, Status> {
        let size = match page_size {
            n if n < 0 => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is negative; use 0 for the default ({DEFAULT_PAGE_SIZE}) or up to {MAX_PAGE_SIZE}"
                )));
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode(page_token).ok_or_else(|| {
                Status::invalid_argument(
                    "page_token is not one netd handed out; start again with an empty token",
                )
            })?)
        };
        Ok(Page { size, after })
    }
}

/// The token that resumes after `last_name`.
pub fn token_after(last_name: &str) -> String {
    let mut t = String::with_capacity(2 * (TOKEN_PREFIX.len() + last_name.len()));
    for b in TOKEN_PREFIX.bytes().chain(last_name.bytes()) {
        t.push_str(&format!("{b:02x}"));
    }
    t
}

fn decode(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN || token.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let name = text.strip_prefix(TOKEN_PREFIX)?;
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_cap_and_refuse_negative() {
        assert_eq!(Page::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::parse(7, "").unwrap().size, 7);
        assert_eq!(Page::parse(1_000_000, "").unwrap().size, MAX_PAGE_SIZE);
        assert_eq!(
            Page::parse(-1, "").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn tokens_round_trip_and_junk_is_refused() {
        let t = token_after("web-1.a_b");
        assert_eq!(
            Page::parse(2, &t).unwrap().after.as_deref(),
            Some("web-1.a_b")
        );
        for bad in ["zz", "abc", "6e313a", "6e313a2f", &"0".repeat(500), "web-1"] {
            assert_eq!(
                Page::parse(2, bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
