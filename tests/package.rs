//! The Debian package and the service it installs: cargo-deb builds the .deb from the
//! metadata in proxy/Cargo.toml (from the test build's binary, to keep CI short; an
//! operator's `cargo deb -p portcullis` packages the release build the same way), dpkg
//! installs it for real, the installed binary checks the installed configuration and
//! `systemd-analyze verify` the unit; then the package is purged. And the systemd
//! notifications the unit's `Type=notify` relies on, read from a NOTIFY_SOCKET.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::require_program;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).1.trim() == "0"
}

/// Builds the .deb into `dir`; its path.
fn build_package(dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let (built, output) = run(Command::new(cargo)
        .args([
            "deb",
            "-p",
            "portcullis",
            "--profile",
            "dev",
            "--no-build",
            "--no-strip",
        ])
        .args(["--fast", "--quiet", "-o"])
        .arg(dir)
        .current_dir(workspace()));
    assert!(built, "cargo deb failed:\n{output}");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("no .deb in {}: {output}", dir.display()))
}

#[test]
fn the_package_installs_the_service_and_a_configuration_that_checks() {
    if !require_program("dpkg") || !require_program("cargo-deb") {
        return;
    }
    if !is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "installing the package needs root under CI=true"
        );
        eprintln!("skipping: dpkg -i needs root");
        return;
    }
    if run(Command::new("dpkg-query").args(["-W", "portcullis"])).0 {
        // Someone's own installation: not this test's to replace and purge.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "a portcullis package is installed on this CI machine"
        );
        eprintln!("skipping: a portcullis package is installed here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(dir.path());
    let (_, contents) = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/portcullis",
        "./usr/lib/systemd/system/portcullis.service",
        "./etc/portcullis/portcullis.toml",
        "./usr/lib/portcullis/plugins/recipients.wasm",
        "./usr/lib/portcullis/plugins/rate_limit.wasm",
        "./usr/share/doc/portcullis/portcullis.example.toml",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    let (_, info) = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Depends: adduser"), "{info}");
    assert!(info.contains("conffiles"), "{info}");

    let (installed, output) = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed, "dpkg -i failed:\n{output}");
    let result = std::panic::catch_unwind(|| {
        let (checked, output) = run(Command::new("/usr/bin/portcullis").args([
            "check",
            "--config",
            "/etc/portcullis/portcullis.toml",
        ]));
        assert!(
            checked,
            "portcullis check of the installed config:\n{output}"
        );
        let (_, user) = run(Command::new("getent").args(["passwd", "portcullis"]));
        assert!(user.starts_with("portcullis:"), "no system user: {user}");
        let (_, mode) =
            run(Command::new("stat").args(["-c", "%a %U:%G", "/etc/portcullis/portcullis.toml"]));
        assert_eq!(
            mode.trim(),
            "640 root:portcullis",
            "the config is the service's only"
        );
        // The example plugins load as the installed config names them.
        let (loaded, output) = run(Command::new("/usr/bin/portcullis")
            .args(["check", "--config"])
            .arg(plugin_config(dir.path())));
        assert!(loaded, "{output}");
        assert!(output.contains("plugin recipients"), "{output}");
        if require_program("systemd-analyze") {
            let (verified, output) = run(Command::new("systemd-analyze")
                .args(["verify", "/usr/lib/systemd/system/portcullis.service"]));
            assert!(verified, "systemd-analyze verify:\n{output}");
        }
    });
    let (purged, output) = run(Command::new("dpkg").args(["--purge", "portcullis"]));
    assert!(purged, "dpkg --purge failed:\n{output}");
    assert!(!Path::new("/usr/bin/portcullis").exists());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// The installed configuration with the installed recipients plugin in its chain.
fn plugin_config(dir: &Path) -> PathBuf {
    let installed = std::fs::read_to_string("/etc/portcullis/portcullis.toml").unwrap();
    let config = installed
        .replace("plugins = []", "plugins = [\"recipients\"]")
        .replace("# [plugins.recipients]", "[plugins.recipients]")
        .replace(
            "# path = \"/usr/lib/portcullis/plugins/recipients.wasm\"",
            "path = \"/usr/lib/portcullis/plugins/recipients.wasm\"",
        )
        .replace(
            "# config = { domains = [\"example.com\"] }",
            "config = { domains = [\"example.com\"] }",
        );
    let path = dir.join("with-plugin.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// The next datagram on `socket`, as text.
fn next_state(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 1024];
    loop {
        match socket.recv(&mut buffer) {
            Ok(length) => return String::from_utf8_lossy(&buffer[..length]).into_owned(),
            // A signal for this process (the other test's child processes): again.
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => panic!("no notification within the timeout: {error}"),
        }
    }
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n\n[upstream]\ndevelopment_folder = \"mail-out\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let states = std::panic::catch_unwind(|| {
        assert_eq!(next_state(&socket), "READY=1\n");
        run(Command::new("kill").args(["-HUP", &pid]));
        let reloading = next_state(&socket);
        assert!(reloading.starts_with("RELOADING=1\n"), "{reloading:?}");
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
        assert_eq!(next_state(&socket), "READY=1\n", "reloaded");
        run(Command::new("kill").args(["-TERM", &pid]));
        assert_eq!(next_state(&socket), "STOPPING=1\n");
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = states {
        std::panic::resume_unwind(panic);
    }
}
