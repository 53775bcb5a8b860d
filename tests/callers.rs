//! Go and Java callers, as platform teams build them with their own tools and
//! nothing from this project but `proto/`: stubs from the standard plugins
//! (protoc-gen-go and protoc-gen-go-grpc in GOPATH mode, protoc with the
//! grpc-java plugin), Debian's grpc-go and grpc-java (netty). Each client
//! (`tests/callers/`) checks health, a submission that waits, a watch to the
//! end, and `ErrorInfo`, `BadRequest`, `ResourceInfo` and `PreconditionFailure`
//! from real refusals. The toolchains are installed from Debian's packages on
//! first use; without them the tests skip loudly, and fail under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;

use selfie_auth_testkit::*;

const GO_PACKAGES: &[&str] = &[
    "golang-go",
    "protobuf-compiler",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
    "golang-google-grpc-dev",
    "golang-google-genproto-dev",
    "golang-github-golang-protobuf-1-5-dev",
];
const JAVA_PACKAGES: &[&str] = &[
    "default-jdk-headless",
    "protobuf-compiler",
    "libgrpc-java",
    "protobuf-compiler-grpc-java-plugin",
    "libnetty-java",
    "libperfmark-java",
    "libprotobuf-java",
];
/// The jars of Debian's grpc-java a netty client needs, besides netty's own.
const JARS: &[&str] = &[
    "grpc-api",
    "grpc-core",
    "grpc-netty",
    "grpc-protobuf",
    "grpc-protobuf-lite",
    "grpc-stub",
    "grpc-context",
    "protobuf",
    "guava",
    "perfmark-api",
    "error_prone_annotations",
    "jsr305",
    "geronimo-annotation-1.3-spec",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command`, failing the test with its output if it fails.
fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The protobuf well-known types protoc imports (`google/protobuf/timestamp.proto`, ...):
/// Debian's protoc only recommends them.
const WELL_KNOWN_TYPES: &str = "/usr/include/google/protobuf/timestamp.proto";

/// Every command of `commands`, installing `packages` when one is missing, and
/// the well-known types protoc needs; why not otherwise.
fn toolchain(commands: &[&str], packages: &[&str]) -> Result<Vec<PathBuf>, String> {
    debian_file(WELL_KNOWN_TYPES, &["libprotobuf-dev"])?;
    commands.iter().map(|command| debian_tool(command, packages)).collect()
}

/// A fresh build folder under `target/`.
fn build_dir(name: &str) -> PathBuf {
    let dir = root().join("target").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("build dir");
    dir
}

/// Runs a caller against a fresh service and checks that all six scenarios pass.
async fn check_caller(command: impl FnOnce(std::net::SocketAddr, &Path) -> tokio::process::Command) {
    let (_sim, service, dir) = simulator_and_service(|_| {}).await;
    let selfie = dir.path().join("selfie.jpg");
    std::fs::write(&selfie, jpeg(96, 96, 5)).expect("write");
    let output = command(service.running.grpc_addr, &selfie)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the caller");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|line| line.starts_with("ok ")).count(),
        6,
        "{stdout}"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_caller_built_from_the_protos_passes_every_check() {
    let tools = match toolchain(&["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"], GO_PACKAGES) {
        Ok(tools) => tools,
        Err(reason) => return skip_or_fail("the Go caller (needs Debian's Go and grpc-go)", &reason),
    };
    let (go, protoc) = (&tools[0], &tools[1]);
    let work = build_dir("callers-go");
    let src = work.join("src");
    let main = src.join("selfieauthcheck");
    std::fs::create_dir_all(&main).expect("dir");
    std::fs::copy(root().join("tests/callers/go/main.go"), main.join("main.go")).expect("copy");
    // The contract's go_package places the stubs; no flag beyond the output folders.
    run(
        Command::new(protoc)
            .current_dir(root().join("proto"))
            .arg(format!("--go_out={}", src.display()))
            .arg(format!("--go-grpc_out={}", src.display()))
            .args(["selfieauth/v1/selfie_auth.proto", "selfieauth/v1/error_reason.proto"]),
        "protoc for Go",
    );
    let binary = work.join("selfieauthcheck");
    run(
        Command::new(go)
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(&main)
            .env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", work.display()))
            .env("GOCACHE", work.join("cache"))
            .env("GOFLAGS", ""),
        "go build",
    );
    check_caller(|addr, selfie| {
        let mut command = tokio::process::Command::new(&binary);
        command.arg(addr.to_string()).arg(selfie);
        command
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_caller_built_from_the_protos_passes_every_check() {
    let tools = match toolchain(&["javac", "java", "protoc", "grpc_java_plugin"], JAVA_PACKAGES) {
        Ok(tools) => tools,
        Err(reason) => return skip_or_fail("the Java caller (needs Debian's JDK and grpc-java)", &reason),
    };
    let (javac, java, protoc, plugin) = (&tools[0], &tools[1], &tools[2], &tools[3]);
    let jars = Path::new("/usr/share/java");
    let mut classpath: Vec<PathBuf> = JARS.iter().map(|jar| jars.join(format!("{jar}.jar"))).collect();
    // netty's jars one by one: netty-all is only a manifest pointing at them.
    let mut netty: Vec<PathBuf> = std::fs::read_dir(jars)
        .expect("/usr/share/java")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            name.starts_with("netty-")
                && std::path::Path::new(name)
                    .extension()
                    .is_some_and(|ext| ext.eq_ignore_ascii_case("jar"))
                && !name.starts_with("netty-all")
                && !name.trim_end_matches(".jar").ends_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    netty.sort();
    classpath.extend(netty);
    if let Some(missing) = classpath.iter().find(|jar| !jar.is_file()) {
        return skip_or_fail("the Java caller", &format!("{} is missing", missing.display()));
    }
    let work = build_dir("callers-java");
    let (sources, classes) = (work.join("src"), work.join("classes"));
    std::fs::create_dir_all(&sources).expect("dir");
    run(
        Command::new(protoc)
            .current_dir(root().join("proto"))
            .arg("-I.")
            .arg(format!("-I{}", root().join("tests/callers/java").display()))
            .arg(format!("--plugin=protoc-gen-grpc-java={}", plugin.display()))
            .arg(format!("--java_out={}", sources.display()))
            .arg(format!("--grpc-java_out={}", sources.display()))
            .args([
                "selfieauth/v1/selfie_auth.proto",
                "selfieauth/v1/error_reason.proto",
                "google/rpc/status.proto",
                "google/rpc/error_details.proto",
                "google/api/field_behavior.proto",
                "health.proto",
            ]),
        "protoc for Java",
    );
    let mut generated = Vec::new();
    let mut folders = vec![sources.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|extension| extension == "java") {
                generated.push(path);
            }
        }
    }
    let joined = std::env::join_paths(&classpath).expect("classpath");
    run(
        Command::new(javac)
            .args(["-nowarn", "-d"])
            .arg(&classes)
            .arg("-cp")
            .arg(&joined)
            .args(&generated)
            .arg(root().join("tests/callers/java/SelfieAuthCheck.java")),
        "javac",
    );
    classpath.insert(0, classes);
    let joined = std::env::join_paths(&classpath).expect("classpath");
    check_caller(|addr, selfie| {
        let mut command = tokio::process::Command::new(java);
        command
            .arg("-cp")
            .arg(&joined)
            .arg("SelfieAuthCheck")
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(selfie);
        command
    })
    .await;
}
