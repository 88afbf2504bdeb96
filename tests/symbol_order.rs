//! `build/symbol-order.ld`, the code layout build.rs links release binaries with, is accepted
//! by lld and changes nothing a program does. The tests build debug binaries, which build.rs
//! leaves alone, so without this a broken script (a generator bug, a hand edit) would fail only
//! a user's `cargo build --release`.

#![cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_code_layout_script_links_a_program_that_runs_unchanged() {
    let (script, text) = script();
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
        .arg("-Clink-arg=-Xlinker")
        .arg(format!("-Clink-arg=--script={}", script.display()))
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
    // std's functions are in the script: the first thing in `.text` is one of them, not
    // whatever lld would have put first (`_start`, from the C runtime's objects).
    let named = section_names(&text);
    let nm = Command::new("nm")
        .arg("-n")
        .arg(&binary)
        .output()
        .expect("run nm");
    let listing = String::from_utf8_lossy(&nm.stdout);
    let functions: Vec<&str> = listing
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "t" | "T", name] if name != "_init" => Some(name),
                _ => None,
            },
        )
        .collect();
    // Not just one: the program's own `main` alone is named too.
    let first = &functions[..functions.len().min(5)];
    let unnamed: Vec<&&str> = first
        .iter()
        .filter(|f| !named.iter().any(|pattern| glob_match(pattern, f)))
        .collect();
    assert!(
        first.len() == 5 && unnamed.is_empty(),
        "the first functions in .text ({first:?}) are not all ones the script names: {unnamed:?}"
    );
}

#[test]
fn every_wildcard_line_stands_for_functions_the_script_names_exactly() {
    // The wildcard lines are what a build with another toolchain or feature set gets; with the
    // profiled toolchain the exact lines match first, so the link above does not exercise them.
    let (_, text) = script();
    let (wildcards, exact): (Vec<String>, Vec<String>) = section_names(&text)
        .into_iter()
        .partition(|name| name.contains('*'));
    assert!(
        wildcards.len() > 100 && exact.len() > 1000,
        "{} wildcard and {} exact lines",
        wildcards.len(),
        exact.len()
    );
    for pattern in &wildcards {
        assert!(
            exact.iter().any(|name| glob_match(pattern, name)),
            "{pattern} matches none of the exact names"
        );
    }
}

/// The script's path and text.
fn script() -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("build/symbol-order.ld");
    let text = std::fs::read_to_string(&path).expect("build/symbol-order.ld");
    (path, text)
}

/// The section names the script lists, `NAME` of each `*(.text.NAME .text.unlikely.NAME)`.
fn section_names(script: &str) -> std::collections::HashSet<String> {
    script
        .lines()
        .filter_map(|line| line.trim().strip_prefix("*(.text."))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (the only
/// metacharacter the script uses; lld's globs also know `?` and `[...]`, which mangled names
/// never contain).
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == name; // no `*`
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[test]
fn glob_match_is_lld_s_star() {
    assert!(glob_match("a17h*E", "a17h0123456789abcdefE"));
    assert!(glob_match("_RNvCs*_3std4main", "_RNvCsAbc12_3std4main"));
    assert!(glob_match("f*", "f"));
    assert!(glob_match("exact", "exact"));
    assert!(!glob_match("exact", "exact2"));
    assert!(!glob_match("a*b*c", "acb"));
    assert!(!glob_match("ab*ba", "aba"));
}
