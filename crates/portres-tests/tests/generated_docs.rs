//! Checks that the committed man pages (`contrib/man/`: portres(1), one
//! page per subcommand, portresd(8)) and shell completions
//! (`contrib/completions/`: bash, zsh, fish, for both programs) are what
//! clap_mangen and clap_complete generate from the clap definitions the
//! binaries use (`portres-cli/src/args.rs`, `portresd/src/
//! portresd_args.rs`, included here as they are). After changing a flag or
//! a help text, regenerate them with
//! `PORTRES_BLESS=1 cargo test -p portres-tests --test generated_docs` and
//! commit them. `scripts/install` installs these files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)] // only the clap definition is used here
#[path = "../../portres-cli/src/args.rs"]
mod portres_args;

#[allow(dead_code)]
mod portresd_args {
    use std::path::PathBuf;

    use clap::{Parser, ValueEnum};
    use portres_daemon::{Config, PortserverAddress};

    include!("../../portresd/src/portresd_args.rs");

    /// portresd's clap definition.
    pub fn command() -> clap::Command {
        <Args as clap::CommandFactory>::command()
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Man pages of `cmd` and every subcommand (what clap_mangen::generate_to
/// writes, in memory): file name -> page.
fn man_pages(cmd: clap::Command, section: &'static str, out: &mut BTreeMap<String, Vec<u8>>) {
    fn walk(cmd: clap::Command, section: &'static str, out: &mut BTreeMap<String, Vec<u8>>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, section, out);
        }
        let man = clap_mangen::Man::new(cmd).section(section);
        let mut page = Vec::new();
        man.render(&mut page).expect("render man page");
        out.insert(man.get_filename(), page);
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    walk(cmd, section, out);
}

fn completions(mut cmd: clap::Command, name: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut cmd, name, &mut text);
        out.insert(file, text);
    }
}

/// Compares (or with PORTRES_BLESS=1 rewrites) the directory `dir` with
/// `generated`: same files, same bytes, nothing else.
fn check_dir(dir: &Path, generated: &BTreeMap<String, Vec<u8>>) {
    let bless = std::env::var_os("PORTRES_BLESS").is_some_and(|v| v == "1");
    let committed: BTreeMap<String, Vec<u8>> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("dir entry").path())
                .map(|p| {
                    let name = p.file_name().expect("name").to_string_lossy().into_owned();
                    (name, std::fs::read(&p).expect("read"))
                })
                .collect()
        })
        .unwrap_or_default();
    if bless {
        std::fs::create_dir_all(dir).expect("mkdir");
        for stale in committed.keys().filter(|k| !generated.contains_key(*k)) {
            std::fs::remove_file(dir.join(stale)).expect("remove stale");
        }
        for (name, text) in generated {
            std::fs::write(dir.join(name), text).expect("write");
        }
        return;
    }
    let mut problems = Vec::new();
    for (name, text) in generated {
        match committed.get(name) {
            None => problems.push(format!("{name} is missing")),
            Some(c) if c != text => problems.push(format!("{name} is out of date")),
            Some(_) => {}
        }
    }
    for name in committed.keys().filter(|k| !generated.contains_key(*k)) {
        problems.push(format!("{name} is generated no more"));
    }
    assert!(
        problems.is_empty(),
        "{}: {}.\nRegenerate with `PORTRES_BLESS=1 cargo test -p portres-tests --test generated_docs` and commit.",
        dir.display(),
        problems.join(", ")
    );
}

#[test]
fn man_pages_are_current() {
    let mut pages = BTreeMap::new();
    man_pages(portres_args::Cli::command(), "1", &mut pages);
    man_pages(portresd_args::command(), "8", &mut pages);
    for name in [
        "portres.1",
        "portres-acquire.1",
        "portres-list.1",
        "portresd.8",
    ] {
        assert!(pages.contains_key(name), "no {name} in {:?}", pages.keys());
    }
    check_dir(&repo().join("contrib/man"), &pages);
}

#[test]
fn shell_completions_are_current() {
    let mut files = BTreeMap::new();
    completions(portres_args::Cli::command(), "portres", &mut files);
    completions(portresd_args::command(), "portresd", &mut files);
    check_dir(&repo().join("contrib/completions"), &files);
}
