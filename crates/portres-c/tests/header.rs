//! Checks that the committed C header, `include/portres/winsock.h`, is what
//! cbindgen generates from this crate's source (plus the hand-written
//! `header/prelude.h` and `header/trailer.h`). After changing the C
//! interface, regenerate it with
//! `PORTRES_BLESS=1 cargo test -p portres-c --test header` and commit it.

use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn committed_header() -> PathBuf {
    crate_dir().join("../../include/portres/winsock.h")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn generate() -> String {
    let dir = crate_dir();
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    config.header = Some(read(&dir.join("header/banner.h")).trim_end().to_owned());
    config.after_includes = Some(read(&dir.join("header/prelude.h")));
    config.trailer = Some(read(&dir.join("header/trailer.h")).trim_end().to_owned());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn committed_header_is_current() {
    let generated = generate();
    let path = committed_header();
    if std::env::var_os("PORTRES_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is not what the source generates (first difference at line {}).\n\
             Regenerate it with `PORTRES_BLESS=1 cargo test -p portres-c --test header` and commit it.",
            path.display(),
            first + 1
        );
    }
}
