//! The SDK README's walkthrough, followed as a newcomer would: its shell commands run
//! as written, its files are written from its code blocks, the plugin is built for
//! wasm32-wasip2, `portcullis check` must print what the README says it prints, and
//! the real proxy, run with the README's configuration, must answer the README's swaks
//! commands as the README shows. A README that drifts from the SDK fails here.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{Proxy, require_program, wait_until};

/// A fenced code block of the README: its language and its text.
struct Block {
    language: String,
    text: String,
}

/// Every fenced code block of a Markdown text, in order.
fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        match (line.strip_prefix("```"), open.as_mut()) {
            (Some(language), None) => {
                open = Some(Block {
                    language: language.trim().to_string(),
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (None, Some(block)) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// The one block in `language` that contains `marker`.
fn block<'a>(blocks: &'a [Block], language: &str, marker: &str) -> &'a str {
    let found: Vec<_> = blocks
        .iter()
        .filter(|b| b.language == language && b.text.contains(marker))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the SDK README should have one ```{language} block containing {marker:?}"
    );
    &found[0].text
}

/// The expected output the README shows as `# ` comment lines after `command`.
fn shown_output(block: &str, command: &str) -> String {
    let mut lines = block.lines().skip_while(|l| !l.contains(command)).skip(1);
    let shown = lines.next().and_then(|l| l.strip_prefix("# "));
    shown
        .unwrap_or_else(|| panic!("the README shows no output after {command:?}"))
        .to_string()
}

/// Runs `script` with `sh -e` in `folder`; its output, or a failure with it.
fn shell(folder: &Path, script: &str) -> Output {
    let output = Command::new("sh")
        .args(["-e", "-c", script])
        .current_dir(folder)
        .output()
        .expect("run sh");
    assert!(
        output.status.success(),
        "{script}\nfailed in {}:\n{}\n{}",
        folder.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Lays out the newcomer's folder: this checkout as `../portcullis` next to the new
/// crate, as the README's path dependency expects. Returns the crate's folder.
fn new_crate(root: &Path, blocks: &[Block]) -> PathBuf {
    std::os::unix::fs::symlink(workspace(), root.join("portcullis")).unwrap();
    let setup = block(blocks, "sh", "cargo new");
    let name = setup
        .split_whitespace()
        .skip_while(|word| *word != "--lib")
        .nth(1)
        .expect("cargo new --lib NAME in the README");
    shell(root, setup);
    let folder = root.join(name);

    // The README's Cargo.toml lines go in place of the empty [dependencies] that
    // cargo new wrote.
    let manifest = std::fs::read_to_string(folder.join("Cargo.toml")).unwrap();
    let manifest = manifest.replace("[dependencies]\n", "")
        + "\n"
        + block(blocks, "toml", "portcullis-sdk = ");
    std::fs::write(folder.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(
        folder.join("src/lib.rs"),
        block(blocks, "rust", "portcullis_sdk::export!"),
    )
    .unwrap();
    std::fs::create_dir_all(folder.join(".cargo")).unwrap();
    std::fs::write(
        folder.join(".cargo/config.toml"),
        block(blocks, "toml", "[target.wasm32-wasip2]"),
    )
    .unwrap();
    // Test-only: the workspace's lock pins the SDK's dependencies to the versions CI
    // builds everywhere else, and the build cache lives in this checkout's target/ so
    // that later runs are quick.
    std::fs::copy(workspace().join("Cargo.lock"), folder.join("Cargo.lock")).unwrap();
    let cache = workspace().join("target/sdk-readme");
    std::fs::create_dir_all(&cache).unwrap();
    std::os::unix::fs::symlink(&cache, folder.join("target")).unwrap();
    folder
}

#[test]
fn the_sdk_readme_walkthrough_builds_loads_and_runs_a_plugin() {
    if !require_program("swaks") {
        return;
    }
    let readme = std::fs::read_to_string(workspace().join("plugin-sdk/README.md")).unwrap();
    let blocks = code_blocks(&readme);
    let root = tempfile::tempdir().unwrap();
    let folder = new_crate(root.path(), &blocks);

    let build = shell(&folder, block(&blocks, "sh", "--target wasm32-wasip2"));
    let tests = String::from_utf8_lossy(&build.stdout);
    assert!(
        tests.contains("test result: ok. 1 passed"),
        "the README's own test should run and pass:\n{tests}"
    );

    let config = block(&blocks, "toml", "[plugins.");
    let config_file = folder.join("portcullis.toml");
    std::fs::write(&config_file, config).unwrap();
    let commands = block(&blocks, "sh", "portcullis check");
    let check = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config", "portcullis.toml"])
        .current_dir(&folder)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{printed}");
    let expected = shown_output(commands, "portcullis check");
    assert!(
        printed.contains(&expected),
        "check printed {printed:?}, the README shows {expected:?}"
    );

    // The proxy as the README runs it, but on a free port.
    let listen = "127.0.0.1:2526";
    assert!(config.contains(listen), "the README's listener moved");
    std::fs::write(&config_file, config.replace(listen, "127.0.0.1:0")).unwrap();
    let proxy = Proxy::run(root, &folder, &config_file, "try", "info");
    let port = proxy.address.port().to_string();

    let sends = block(&blocks, "sh", "swaks");
    for command in sends.lines().filter(|l| l.starts_with("swaks ")) {
        let command = command.replace("2526", &port);
        let output = Command::new("sh").args(["-c", &command]).output().unwrap();
        let transcript = String::from_utf8_lossy(&output.stdout);
        let expected = shown_output(sends, &command.replace(&port, "2526"));
        let expected = expected.split('…').next().unwrap();
        assert!(
            transcript.contains(expected),
            "{command} should show {expected:?}:\n{transcript}"
        );
    }
    let stored = || {
        std::fs::read_dir(folder.join("mail-out"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    wait_until("the accepted message is stored", || stored() == 1);
    drop(proxy);
}
