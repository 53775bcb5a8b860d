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

/// Skips a test that needs an external tool, loudly; under `CI=true` fails instead.
pub fn skip_or_fail(what: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} cannot run under CI: {reason}");
    }
    eprintln!("\n*** SKIPPED: {what}: {reason} ***\n");
}
