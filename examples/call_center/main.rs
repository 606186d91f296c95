//! Run with `cargo run --example call_center`.
fn main() {}
