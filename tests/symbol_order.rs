//! `build/symbol-order.ld`, the code layout build.rs links release binaries with, is accepted
//! by lld and changes nothing a program does. The tests build debug binaries, which build.rs
//! leaves alone, so without this a broken script (a generator bug, a hand edit) would fail only
//! a user's `cargo build --release`.

#![cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]

use std::path::Path;
use std::process::Command;

#[test]
fn the_code_layout_script_links_a_program_that_runs_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("build/symbol-order.ld");
    let text = std::fs::read_to_string(&script).expect("build/symbol-order.ld");
    assert!(
        text.trim_end().ends_with("INSERT AFTER .init;"),
        "the script must only add to lld's default layout"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("main.rs");
    // Formatting, a hash map and a thread: functions the script names (std's, by wildcard).
    std::fs::write(
        &source,
        "fn main() { let mut m = std::collections::HashMap::new(); m.insert(1, 2); \
         let t = std::thread::spawn(move || m[&1] * 21); println!(\"{}\", t.join().unwrap()); }",
    )
    .expect("write main.rs");
    let binary = dir.path().join("main");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let built = Command::new(rustc)
        .arg("-O")
        .arg("-o")
        .arg(&binary)
        .arg(format!("-Clink-arg=-Wl,-T,{}", script.display()))
        .arg(&source)
        .output()
        .expect("run rustc");
    assert!(
        built.status.success(),
        "linking with the script failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&binary).output().expect("run the program");
    assert!(ran.status.success());
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "42\n");
    // std's functions are in the script (by wildcard): the first thing in `.text` is one of
    // them, not whatever lld would have put first.
    let nm = Command::new("nm")
        .arg("-n")
        .arg(&binary)
        .output()
        .expect("run nm");
    let listing = String::from_utf8_lossy(&nm.stdout);
    let first_text = listing
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "t" | "T", name] if name != "_init" => Some(name.to_owned()),
                _ => None,
            },
        )
        .next()
        .expect("a function in .text");
    assert!(
        text.contains(&strip_hash(&first_text)),
        "the first function, {first_text}, is not one the script names"
    );
}

/// The symbol with its legacy hash (`17h<16 hex digits>E`) as the script's wildcard.
fn strip_hash(symbol: &str) -> String {
    match symbol.len().checked_sub(20) {
        Some(at) if symbol[at..].starts_with("17h") && symbol.ends_with('E') => {
            format!("{}17h*E", &symbol[..at])
        }
        _ => symbol.to_owned(),
    }
}
