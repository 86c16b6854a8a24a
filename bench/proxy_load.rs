//! Placeholder; replaced by the proxy benchmark client.
fn main() {}
