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
/// The catalog's syncs (`fsync`, `sync_file_range`, and `fdatasync` of a
/// file in `catalog-wal/`, its log) have a gate of their own
/// (`start_fsync_gated`). `None` without a C compiler.
pub fn build_sync_gate(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let source = dir.join("sync_gate.c");
    std::fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The catalog's syncs, fsync and sync_file_range (sled) and the
   fdatasync of its log (a file in catalog-wal/), are held while
   FSYNC_GATE exists. */
static void wait_fsync_gate(void) {
    const char *gate = getenv("FSYNC_GATE");
    struct stat st;
    while (gate && stat(gate, &st) == 0) usleep(5000);
}

static int is_catalog_log(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strstr(path, "/catalog-wal/") != NULL;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (is_catalog_log(fd)) {
        wait_fsync_gate();
        return real(fd);
    }
    const char *gate = getenv("SYNC_GATE");
    const char *pass = getenv("SYNC_GATE_PASS");
    struct stat st;
    while (gate && stat(gate, &st) == 0) {
        if (pass && unlink(pass) == 0) break;
        usleep(5000);
    }
    return real(fd);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    wait_fsync_gate();
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (!real) real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    wait_fsync_gate();
    return real(fd, offset, nbytes, flags);
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

/// The broker binary with the sync gate preloaded.
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

/// The broker binary with the gate preloaded holding the catalog's syncs
/// (its log's `fdatasync`, sled's `fsync`) while `gate` exists; the
/// message log's `fdatasync` runs freely.
pub async fn start_fsync_gated(
    data_dir: &std::path::Path,
    library: &std::path::Path,
    gate: &std::path::Path,
) -> BrokerProcess {
    let text = |p: &std::path::Path| p.to_str().expect("UTF-8 path").to_string();
    BrokerProcess::start_with_env(
        data_dir,
        &[("LD_PRELOAD", &text(library)), ("FSYNC_GATE", &text(gate))],
    )
    .await
}
