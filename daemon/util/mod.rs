//! Leaves with no netd dependencies: address parsing shared with `netctl`
//! ([`addr`]), paging of long lists ([`page`]) and rate-limited warnings
//! ([`warn_limit`]).

pub mod addr;
#[cfg(test)]
pub(crate) mod fuzz_support;
pub mod page;
pub mod warn_limit;
