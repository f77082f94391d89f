//! The one harness that starts the function, for every test and bench: the
//! real binary (or another program, such as the arm64 artefact under qemu)
//! under the runtime API stand-in ([`RuntimeApi`]) or under `cargo lambda
//! watch --only-lambda-apis`. The Lambda environment is assembled here and
//! nowhere else ([`lambda_env`]); `scripts/emulator.sh`, which starts the
//! function for `make run`, `invoke` and `measure`, sets the same variables.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Process, cargo_bin, cargo_lambda_watch, free_port,
    runtime_api::{Outcome, RuntimeApi},
    unique,
};

/// The Lambda environment of a function named `name` polling the runtime
/// API at `runtime_api` (`AWS_LAMBDA_RUNTIME_API`: `host:port`, or a URL
/// with a path for `cargo lambda watch`): what Lambda sets besides the
/// function's own settings. The canonical list; keep `scripts/emulator.sh`
/// in step.
pub fn lambda_env(runtime_api: &str, name: &str) -> [(&'static str, String); 4] {
    [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "1".to_owned()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
    ]
}

/// How to start the function: the program, its settings, the runtime.
/// Settings apply in order after the Lambda environment, so a test may
/// override any of it; the test process's other variables are inherited.
#[must_use]
pub struct Launch {
    program: Vec<OsString>,
    /// A setting, or a variable removed (`None`).
    env: Vec<(String, Option<String>)>,
    extensions: bool,
    inherit_output: bool,
}

impl Launch {
    /// The `event-forwarder` binary cargo built for this test or bench.
    pub fn forwarder() -> Self {
        Self::program(&[cargo_bin("event-forwarder").into_os_string()])
    }

    /// Another program: `program` is the command line (e.g. an emulator
    /// and the arm64 artefact). The tests' defaults: classic queues (a
    /// quorum queue takes one message past `x-max-length`, see
    /// [`crate::reject_publish_after`]) and no `RUST_LOG` from the caller.
    pub fn program(program: &[impl Into<OsString> + Clone]) -> Self {
        Self {
            program: program.iter().cloned().map(Into::into).collect(),
            env: vec![
                ("QUEUE_TYPE".into(), Some("classic".into())),
                ("RUST_LOG".into(), None),
            ],
            extensions: true,
            inherit_output: false,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), Some(value.to_owned())));
        self
    }

    pub fn envs(self, env: &[(&str, &str)]) -> Self {
        env.iter().fold(self, |launch, (k, v)| launch.env(k, v))
    }

    /// The function does not see `key` (the test process keeps it).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.env.push((key.to_owned(), None));
        self
    }

    /// A runtime API stand-in that lacks the Extensions API, as some
    /// emulators do.
    pub fn without_extensions_api(mut self) -> Self {
        self.extensions = false;
        self
    }

    /// The function's output goes to this process's stdout and stderr
    /// instead of log files ([`Function::log`] is then empty).
    pub fn inherit_output(mut self) -> Self {
        self.inherit_output = true;
        self
    }

    /// Starts the function under a runtime API stand-in of its own.
    pub async fn start(self) -> Function {
        let api = if self.extensions {
            RuntimeApi::start().await
        } else {
            RuntimeApi::without_extensions().await
        };
        let address = api.address();
        self.spawn(&address, Runtime::StandIn(api))
    }

    /// Starts `cargo lambda watch --only-lambda-apis` on a free port and
    /// the function polling it: the runtime API and the Invoke API
    /// ([`Function::endpoint`]) of AWS's tooling.
    pub fn watch(self) -> Function {
        let port = free_port();
        let emulator = cargo_lambda_watch(port);
        let address = format!("http://127.0.0.1:{port}/.rt");
        self.spawn(
            &address,
            Runtime::Watch {
                port,
                _emulator: emulator,
            },
        )
    }

    fn spawn(self, runtime_api: &str, runtime: Runtime) -> Function {
        let name = unique("fn").replace('.', "-");
        let log_path = std::env::temp_dir().join(format!("{name}.log"));
        let stderr_path = std::env::temp_dir().join(format!("{name}.stderr.log"));
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..])
            .envs(lambda_env(runtime_api, &name));
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if self.inherit_output {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            cmd.stdout(std::fs::File::create(&log_path).expect("a log file"))
                .stderr(std::fs::File::create(&stderr_path).expect("a log file"));
        }
        let spawned = Instant::now();
        let child = cmd.spawn().expect("the function starts");
        Function {
            child,
            spawned,
            runtime,
            name,
            log_path,
            stderr_path,
        }
    }
}

enum Runtime {
    StandIn(RuntimeApi),
    Watch { port: u16, _emulator: Process },
}

/// The function process; killed when dropped, its logs removed.
pub struct Function {
    child: Child,
    spawned: Instant,
    runtime: Runtime,
    /// `AWS_LAMBDA_FUNCTION_NAME`, unless the test set its own.
    pub name: String,
    log_path: PathBuf,
    stderr_path: PathBuf,
}

impl Function {
    /// Starts the binary with `env` (at least AMQP_URI and EXCHANGE) under
    /// the runtime API stand-in.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Launch::forwarder().envs(env).start().await
    }

    /// Like [`Function::start`], but the child does not inherit the test
    /// process's variables named in `unset` (only the child changes).
    pub async fn start_without(env: &[(&str, &str)], unset: &[&str]) -> Self {
        Self::start_program(&[cargo_bin("event-forwarder").into_os_string()], env, unset).await
    }

    /// Like [`Function::start_without`], with another program: `program`
    /// is the command line (e.g. an emulator and the arm64 artefact).
    pub async fn start_program(
        program: &[impl Into<OsString> + Clone],
        env: &[(&str, &str)],
        unset: &[&str],
    ) -> Self {
        let launch = unset
            .iter()
            .fold(Launch::program(program), |l, k| l.env_remove(k));
        launch.envs(env).start().await
    }

    /// The binary under a runtime API stand-in that lacks the Extensions API.
    pub async fn start_without_extensions_api(env: &[(&str, &str)]) -> Self {
        Launch::forwarder()
            .without_extensions_api()
            .envs(env)
            .start()
            .await
    }

    /// The binary with `env` under `cargo lambda watch`.
    pub fn watch(env: &[(&str, &str)]) -> Self {
        Launch::forwarder().envs(env).watch()
    }

    /// The runtime API stand-in the function polls.
    ///
    /// # Panics
    /// Under `cargo lambda watch`, which is invoked through
    /// [`Function::endpoint`].
    pub fn api(&self) -> &RuntimeApi {
        match &self.runtime {
            Runtime::StandIn(api) => api,
            Runtime::Watch { .. } => panic!("the function runs under cargo lambda watch"),
        }
    }

    /// The port of the runtime API (under `cargo lambda watch`, also of
    /// the Invoke API: `cargo lambda invoke -P`).
    pub fn port(&self) -> u16 {
        match &self.runtime {
            Runtime::StandIn(api) => api.port(),
            Runtime::Watch { port, .. } => *port,
        }
    }

    /// The Invoke API's URL (`cargo lambda watch`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// When the process was spawned: the start of its cold start.
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connection_name(&self) -> String {
        format!("event-forwarder:{}", self.name)
    }

    /// Invokes with `timeout` as the deadline; panics if the function does
    /// not answer before the deadline, as Lambda would kill it.
    pub async fn invoke(&self, event: &Value, timeout: Duration) -> (Value, Duration) {
        let started = Instant::now();
        let outcome = self.api().invoke(event, timeout).await;
        let took = started.elapsed();
        match outcome {
            Some(Outcome::Response(r)) => {
                assert!(took < timeout, "answered after the deadline ({took:?})");
                (r, took)
            }
            other => panic!("no response: {other:?}\nlog:\n{}", self.log()),
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = self.child.try_wait().expect("the process's status") {
                return s;
            }
            assert!(Instant::now() < until, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself (a failed cold start).
    pub fn wait_exit(&mut self, wait: Duration) -> ExitStatus {
        let until = Instant::now() + wait;
        loop {
            if let Some(s) = self.child.try_wait().expect("the process's status") {
                return s;
            }
            assert!(Instant::now() < until, "the function did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process wrote: stdout, then stderr.
    pub fn output(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        self.log() + &stderr
    }

    /// What the process wrote to stdout: its JSON log lines.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The `fields` of every summary line, in order.
    pub fn summaries(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("batch forwarded"))
            })
            .map(|l| l["fields"].clone())
            .collect()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}
