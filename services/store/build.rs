// `sqlx::migrate!` embeds ./migrations at compile time; without this a migration file added
// later is not seen by an incremental build (what `sqlx migrate build-script` generates).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
