//! Placeholder so the workspace parses while the benchmark is being written.
fn main() {}
