//! External tools a test installs for itself, and skipping when they cannot run.

/// A virtual environment under `target/NAME` with `packages` installed from
/// PyPI on first use; `probe` is Python code that succeeds once they are there.
pub fn python_venv(name: &str, packages: &[&str], probe: &str) -> Result<std::path::PathBuf, String> {
    use std::process::Command;
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(name);
    let python = venv.join("bin").join("python");
    let ready = |python: &std::path::Path| {
        python.exists()
            && Command::new(python)
                .args(["-c", probe])
                .status()
                .is_ok_and(|status| status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|error| format!("python3: {error}"))?;
    if !created.success() {
        return Err("python3 -m venv failed".into());
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .map_err(|error| format!("pip: {error}"))?;
    if !pip.success() || !ready(&python) {
        return Err(format!("pip install {} failed", packages.join(" ")));
    }
    Ok(python)
}

/// A directory `target/NAME` with npm `packages` installed on first use
/// (each `name@version`); ready once every package's `package.json` is there.
pub fn npm_packages(name: &str, packages: &[&str]) -> Result<std::path::PathBuf, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(name);
    let installed = |dir: &std::path::Path| {
        packages.iter().all(|package| {
            let name = package.rsplit_once('@').map_or(*package, |(name, _)| name);
            dir.join("node_modules").join(name).join("package.json").exists()
        })
    };
    if installed(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|error| error.to_string())?;
    std::fs::write(
        dir.join("package.json"),
        format!(r#"{{"name": "{name}", "private": true}}"#),
    )
    .map_err(|error| error.to_string())?;
    let npm = std::process::Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund"])
        .args(packages)
        .current_dir(&dir)
        .status()
        .map_err(|error| format!("npm: {error}"))?;
    if !npm.success() || !installed(&dir) {
        return Err(format!("npm install {} failed", packages.join(" ")));
    }
    Ok(dir)
}

/// Skips a test that needs an external tool, loudly; under `CI=true` fails instead.
pub fn skip_or_fail(what: &str, reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} cannot run under CI: {reason}"
    );
    eprintln!("\n*** SKIPPED: {what}: {reason} ***\n");
}

/// The path of `command`, installing Debian's `packages` first when it is
/// missing (as root, with apt-get); why not otherwise. Tests installing the
/// same packages at once wait for each other on dpkg's lock.
pub fn debian_tool(command: &str, packages: &[&str]) -> Result<std::path::PathBuf, String> {
    let find = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(command))
                .find(|candidate| candidate.is_file())
        })
    };
    debian_install(command, find, packages)
}

/// `path`, installing Debian's `packages` first when it is not there (a
/// header, a `.proto` a package ships); why not otherwise.
pub fn debian_file(path: &str, packages: &[&str]) -> Result<std::path::PathBuf, String> {
    let find = || Some(std::path::PathBuf::from(path)).filter(|file| file.is_file());
    debian_install(path, find, packages)
}

fn debian_install(
    what: &str,
    find: impl Fn() -> Option<std::path::PathBuf>,
    packages: &[&str],
) -> Result<std::path::PathBuf, String> {
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!("installing {} (Debian) for {what} ...", packages.join(" "));
    let apt_get = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|error| format!("apt-get: {error}"))
    };
    let install = [&["install", "-y", "--no-install-recommends"][..], packages].concat();
    let mut installed = apt_get(&install)?;
    if !installed.success() {
        // A fresh machine may not have read the package lists yet.
        apt_get(&["update", "-q"])?;
        installed = apt_get(&install)?;
    }
    if !installed.success() {
        return Err(format!("apt-get install {} failed ({installed})", packages.join(" ")));
    }
    find().ok_or_else(|| format!("{what} is not there after installing {}", packages.join(" ")))
}
