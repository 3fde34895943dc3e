//! A way to hold the message log's sync from a test, without a hook in the
//! broker: an `LD_PRELOAD` library whose `fdatasync` waits while a gate
//! file exists, and the broker binary started with it. SIGKILL alone cannot
//! show a missing or misordered sync (the page cache survives it); a sync
//! held open can.
#![allow(dead_code)]

use crate::common::BrokerProcess;

/// An `LD_PRELOAD` library whose `fdatasync` waits while a gate file
/// exists: the message log's sync is held as long as the test wants. A
/// pass file (`pass_file`) lets one waiting sync through, then is gone.
/// `None` without a C compiler.
pub fn build_sync_gate(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let source = dir.join("sync_gate.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *gate = getenv("SYNC_GATE");
    const char *pass = getenv("SYNC_GATE_PASS");
    struct stat st;
    while (gate && stat(gate, &st) == 0) {
        if (pass && unlink(pass) == 0) break;
        usleep(5000);
    }
    return real(fd);
}
"#,
    )
    .ok()?;
    let library = dir.join("libsync_gate.so");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .ok()?;
    built.success().then_some(library)
}

/// The file that lets one held sync through.
pub fn pass_file(gate: &std::path::Path) -> std::path::PathBuf {
    gate.with_extension("pass")
}

/// The broker binary with the sync gate preloaded (test files that use
/// this also declare `mod common;`).
pub async fn start_gated(
    data_dir: &std::path::Path,
    library: &std::path::Path,
    gate: &std::path::Path,
) -> BrokerProcess {
    let text = |p: &std::path::Path| p.to_str().expect("UTF-8 path").to_string();
    let pass = pass_file(gate);
    BrokerProcess::start_with_env(
        data_dir,
        &[
            ("LD_PRELOAD", &text(library)),
            ("SYNC_GATE", &text(gate)),
            ("SYNC_GATE_PASS", &text(&pass)),
        ],
    )
    .await
}
