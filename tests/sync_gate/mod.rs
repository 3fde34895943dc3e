//! A way to hold the message log's sync from a test, without a hook in the
//! broker: an `LD_PRELOAD` library whose `fdatasync` waits while a gate
//! file exists, and the broker binary started with it. SIGKILL alone cannot
//! show a missing or misordered sync (the page cache survives it); a sync
//! held open can.
#![allow(dead_code)]

use std::time::Duration;

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

/// The broker binary with the sync gate preloaded.
pub struct GatedBroker {
    pub port: u16,
    child: std::process::Child,
}

impl GatedBroker {
    pub async fn start(
        data_dir: &std::path::Path,
        library: &std::path::Path,
        gate: &std::path::Path,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_broker"))
            .env("BROKER__AMQP__BIND", "127.0.0.1")
            .env("BROKER__AMQP__PORT", port.to_string())
            .env("BROKER__STORAGE__DATA_DIR", data_dir)
            .env("BROKER__MANAGEMENT__PORT", "0")
            .env("BROKER__PROMETHEUS__PORT", "0")
            .env("RUST_LOG", "warn")
            .env("LD_PRELOAD", library)
            .env("SYNC_GATE", gate)
            .env("SYNC_GATE_PASS", pass_file(gate))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start broker binary");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return GatedBroker { port, child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("broker did not start listening on {port}");
    }
}

impl GatedBroker {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for GatedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
