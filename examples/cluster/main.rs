//! A local cluster in one command: Redis, a PostgreSQL primary with streaming replicas, several
//! `call_center` instances and NGINX in front, with fault commands on stdin.
//!
//! ```sh
//! cargo run --example cluster                      # 3 instances, 2 replicas, NGINX if installed
//! cargo run --example cluster -- --instances 2 --replicas 1 --password s3cret --no-nginx
//! cargo run --example cluster -- --help
//! ```
//!
//! Every server runs on a free loopback port in a temp dir (through `welcomedly-testkit`), so a
//! Redis, PostgreSQL or NGINX already running on the machine is left alone. It first builds the
//! `call_center` example with the same profile and features (skip with `--no-build`), starts
//! everything, waits until each instance answers `/health/ready`, then prints the URLs, the demo
//! users and a generated admin token, and reads commands from stdin: `status`, `kill <i>`,
//! `stop <i>`, `restart <i>`, `kill-replica <j>`, `restart-replica <j>`, `pause-replica <j>`,
//! `resume-replica <j>`, `lag <j> <ms>`, `promote <j>`, `kill-primary`, `restart-primary`,
//! `kill-redis`, `restart-redis`, `pause-redis [ms]`, `resume-redis`, `help`, `quit`.
//!
//! Ctrl-C, SIGTERM or `quit` tears everything down: SIGTERM to the instances (they drain), SIGKILL
//! after 8 s, then NGINX, PostgreSQL and Redis. The end of stdin does *not* quit, so the cluster
//! can run in the background (`cargo run --example cluster < /dev/null &`) until a signal. Every
//! child is owned by a guard that kills it on drop, so a panic leaves no process behind.
//!
//! Needs `redis-server` and PostgreSQL installed (see `welcomedly-testkit`); NGINX is optional.

mod command;
mod instance;
mod options;
mod redis;
mod stack;

use std::env;
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;

use crate::options::{Options, Parsed};
use crate::stack::Stack;

/// What the main loop reacts to.
#[derive(Debug)]
enum Event {
    Line(String),
    StdinClosed,
    Signal(&'static str),
}

fn main() -> ExitCode {
    let options = match options::parse(env::args().skip(1)) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            print!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("cluster: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cluster: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<(), String> {
    let (events, inbox) = mpsc::channel();
    let stopping = Arc::new(AtomicBool::new(false));
    // Before anything starts, so a Ctrl-C during the start still tears down what runs.
    watch_signals(events.clone(), Arc::clone(&stopping))?;
    let binary = call_center_binary(options.build)?;
    let mut stack = Stack::start(options, &binary, &stopping)?;
    stack.print_banner();
    read_stdin(events);
    event_loop(&mut stack, &inbox);
    stack.shutdown();
    Ok(())
}

fn event_loop(stack: &mut Stack, inbox: &Receiver<Event>) {
    while let Ok(event) = inbox.recv() {
        match event {
            Event::Line(line) => match command::parse(&line) {
                Ok(command::Command::Quit) => {
                    println!("quit: tearing everything down");
                    return;
                }
                Ok(command) => stack.run(command),
                Err(error) => println!("{error}\n{}", command::HELP),
            },
            Event::StdinClosed => println!(
                "stdin closed: the cluster keeps running; stop it with Ctrl-C or `kill -TERM {}`",
                std::process::id()
            ),
            Event::Signal(name) => {
                println!("{name}: tearing everything down");
                return;
            }
        }
    }
}

/// SIGINT and SIGTERM, caught on a thread of their own (a small tokio runtime), become events.
fn watch_signals(events: Sender<Event>, stopping: Arc<AtomicBool>) -> Result<(), String> {
    let (ready, installed) = mpsc::sync_channel::<Result<(), String>>(1);
    thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot start the signal watcher ({e})")));
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                // SIGHUP too: closing the terminal must tear down, not orphan, the servers.
                let (mut interrupt, mut terminate, mut hangup) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) {
                    (Ok(interrupt), Ok(terminate), Ok(hangup)) => (interrupt, terminate, hangup),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        let _ = ready.send(Err(format!(
                            "cannot catch SIGINT/SIGTERM/SIGHUP ({e}): Ctrl-C would leave servers behind"
                        )));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                let name = tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                    _ = hangup.recv() => "SIGHUP",
                };
                stopping.store(true, Ordering::SeqCst);
                let _ = events.send(Event::Signal(name));
                // Keep catching: a second Ctrl-C must not cut the teardown short.
                loop {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                        _ = hangup.recv() => {}
                    }
                    eprintln!(
                        "cluster: still tearing down; `kill -KILL {}` would leave servers behind",
                        std::process::id()
                    );
                }
            });
        })
        .map_err(|e| format!("cannot start the signal thread ({e})"))?;
    installed
        .recv()
        .map_err(|_| "the signal watcher stopped before it was ready".to_owned())?
}

/// Lines of stdin become events; at its end the cluster keeps running.
fn read_stdin(events: Sender<Event>) {
    let spawned = thread::Builder::new()
        .name("stdin".to_owned())
        .spawn(move || {
            // Bytes, not `lines()`: a stray non-UTF-8 byte is a bad command, not the end of input.
            let mut stdin = io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                if events.send(Event::Line(line)).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::StdinClosed);
        });
    if let Err(error) = spawned {
        eprintln!("cluster: cannot read stdin ({error}); stop the cluster with Ctrl-C");
    }
}

/// The `call_center` binary next to this one (target/<profile>/examples/), built first so that
/// it is current: `cargo run --example cluster` does not build other examples.
fn call_center_binary(build: bool) -> Result<PathBuf, String> {
    let exe = env::current_exe()
        .map_err(|e| format!("cannot find this program's path ({e}) to locate call_center"))?;
    let examples = exe
        .parent()
        .ok_or("this program has no parent directory: run it with `cargo run --example cluster`")?;
    let binary = examples.join("call_center");
    if build {
        build_call_center(examples)?;
    }
    if !binary.is_file() {
        return Err(format!(
            "{} does not exist: build it with `cargo build --example call_center` (same profile \
             as this program), or drop --no-build",
            binary.display()
        ));
    }
    Ok(binary)
}

/// `$CARGO build --example call_center` with this program's profile, target dir and features.
fn build_call_center(examples: &Path) -> Result<(), String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(["--example", "call_center"]);
    let profile_dir = examples.parent();
    match profile_dir
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
    {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    // Cargo marks its target dir with CACHEDIR.TAG; pass it on so a `--target-dir` is honoured.
    if let Some(target) = profile_dir.and_then(Path::parent)
        && target.join("CACHEDIR.TAG").is_file()
    {
        command.arg("--target-dir").arg(target);
    }
    // The same features as this program, so the build reuses what is compiled already.
    let features: Vec<&str> = [
        ("cluster", cfg!(feature = "cluster")),
        ("flags", cfg!(feature = "flags")),
        ("flags-redis", cfg!(feature = "flags-redis")),
        ("db", cfg!(feature = "db")),
        ("axum", cfg!(feature = "axum")),
        ("full", cfg!(feature = "full")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    if features.len() == 6 {
        // Every feature: most likely `--workspace --all-features`, the tests' and CI's build.
        command.args(["--workspace", "--all-features"]);
    } else if !features.is_empty() {
        command.arg("--features").arg(features.join(","));
    }
    eprintln!("building call_center: {command:?}");
    let status = command.status().map_err(|e| {
        format!(
            "cannot run {} ({e}): build call_center yourself and pass --no-build",
            Path::new(&cargo).display()
        )
    })?;
    if !status.success() {
        return Err(format!(
            "building call_center failed ({status}): fix the error above, or pass --no-build"
        ));
    }
    Ok(())
}
