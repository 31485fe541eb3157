//! `corekvctl`: corekv's command-line client, with etcdctl v3's habits: the same commands,
//! flags, output formats (`-w simple|json|table`) and exit codes, so scripts written for
//! etcdctl keep working. See `corekvctl --help` and the "corekvctl" section of README.md.
//!
//! Input (a value or a transaction on stdin) is read and checked completely before the
//! first connection is made, so a malformed command never reaches the server.

mod lease;
mod offline;
mod output;
mod requests;
mod txn_input;
mod watch;

use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use corekv::client::{Client, ClientError, ClientOptions, Glommio};
use corekv::mvcc::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

use output::{EndpointHealth, EndpointStatus, Format, SimpleOptions};
use requests::{DelArgs, GetArgs, PutArgs};

/// Exit codes; the numbers are etcdctl's, so scripts can branch on them the same way.
pub mod exit {
    /// The request failed: the server refused it, it timed out or the connection was lost
    /// (a write may then have been applied or not), or an endpoint is unhealthy.
    pub const ERROR: u8 = 1;
    /// No endpoint could be reached (or an endpoint does not resolve).
    pub const BAD_CONNECTION: u8 = 2;
    /// Malformed input on stdin (the `txn` syntax).
    pub const INVALID_INPUT: u8 = 3;
    /// A valid flag with a value that is not supported (`--sort-by=SIZE`, `-w table` on get).
    pub const BAD_FEATURE: u8 = 4;
    /// Writing the output failed.
    pub const IO: u8 = 6;
    /// Bad command-line usage: unknown flag, missing argument, conflicting flags.
    pub const BAD_ARGS: u8 = 128;
}

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    the request failed: refused by the server, timed out, connection lost, or unhealthy
  2    no endpoint reachable (or an endpoint does not resolve)
  3    malformed txn input on stdin
  4    a flag value that is not supported (e.g. --sort-by=SIZE, -w table for get)
  6    writing the output failed
  128  bad command-line usage
Errors are printed on stderr as \"Error: <message>\".";

/// Most bytes of a value read from stdin by `put` (the server's largest accepted
/// `--max-request-bytes`; a larger value could never be stored).
pub const MAX_STDIN_VALUE_BYTES: u64 = 64 << 20;

/// Why the command failed: the exit code and the message for stderr (empty when the
/// details were already printed).
#[derive(Debug)]
pub struct Failure {
    /// One of the [`exit`] codes.
    pub code: u8,
    /// The message printed after "Error: ".
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// corekv's command-line client (etcdctl-compatible commands, flags and output).
#[derive(Parser, Debug)]
#[command(name = "corekvctl", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// Comma-separated endpoints (host:port); requests go to the first reachable one.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Time limit of each request (Go duration: 5s, 500ms, 1m).
    #[arg(long, global = true, default_value = "5s", value_parser = output::parse_go_duration)]
    command_timeout: Duration,
    /// Time limit of each connection attempt (Go duration).
    #[arg(long, global = true, default_value = "2s", value_parser = output::parse_go_duration)]
    dial_timeout: Duration,
    /// Output format.
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = Format::Simple)]
    write_out: Format,
    /// Print keys and values as hex-escaped bytes (simple format).
    #[arg(long, global = true)]
    hex: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store a value at a key (value from stdin when not given).
    Put(PutArgs),
    /// Read a key, or the keys of a range or prefix.
    Get(GetArgs),
    /// Delete a key, or the keys of a range or prefix [key, range_end).
    Del(DelArgs),
    /// Run a transaction read from stdin: compares, blank line, success ops, blank line,
    /// failure ops. Example compare: mod("key1") > "0"; example op: put key1 "value".
    Txn(TxnArgs),
    /// Discard the history below a revision.
    Compaction(CompactionArgs),
    /// Commands about the endpoints given with --endpoints.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Print the events on a key, range or prefix until interrupted.
    Watch(watch::WatchArgs),
    /// Lease commands: grant, revoke, keep-alive, timetolive, list.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Give the free space of a stopped member's backend file back to the file system
    /// (offline: the server must not be running on --data-dir).
    Defrag(offline::DefragArgs),
    /// Offline checks of a stopped member's data dir.
    #[command(subcommand)]
    Check(offline::CheckCommand),
}

#[derive(Args, Debug)]
struct TxnArgs {
    /// Prompt for each part of the transaction.
    #[arg(short, long)]
    interactive: bool,
}

#[derive(Args, Debug)]
struct CompactionArgs {
    /// The revision to compact at (reads below it fail afterwards).
    #[arg(allow_negative_numbers = true)]
    revision: i64,
    /// Return only once the old revisions are physically removed.
    #[arg(long)]
    physical: bool,
}

#[derive(Subcommand, Debug)]
enum EndpointCommand {
    /// Print each endpoint's status (simple: endpoint, ID, version, db size, is leader,
    /// is learner, raft term, raft index, raft applied index, errors).
    Status,
    /// Check each endpoint with a linearizable read of the key "health"; exit 1 if any is
    /// unhealthy.
    Health,
}

/// A command with its input read and checked, ready to send.
enum Prepared {
    /// A request to the first reachable endpoint.
    Kv(KvOp),
    /// `endpoint status`.
    Status,
    /// `endpoint health`.
    Health,
    /// `watch`: runs until interrupted.
    Watch(corekv::client::watch::WatchRequest),
    /// A lease command.
    Lease(lease::LeaseOp),
}

/// A KV request and how to print its response.
enum KvOp {
    Put(PutRequest),
    Get {
        request: RangeRequest,
        count_only: bool,
        value_only: bool,
    },
    Del(DeleteRangeRequest),
    Txn(TxnRequest),
    Compaction {
        revision: i64,
        physical: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // --help / --version.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                // No command given: the help text on stderr, and a usage-error exit.
                let _ = e.print();
                return ExitCode::from(exit::BAD_ARGS);
            }
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("Error: {text}");
            return ExitCode::from(exit::BAD_ARGS);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("Error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let format = cli.write_out;
    let simple = SimpleOptions {
        hex: cli.hex,
        value_only: false,
    };
    let name = match &cli.command {
        Command::Put(_) => "put",
        Command::Get(_) => "get",
        Command::Del(_) => "del",
        Command::Txn(_) => "txn",
        Command::Compaction(_) => "compaction",
        Command::Endpoint(_) => "endpoint",
        Command::Watch(_) => "watch",
        Command::Lease(_) => "lease",
        Command::Defrag(_) => "defrag",
        Command::Check(_) => "check",
    };
    // etcdctl renders tables only for the endpoint commands; `compaction` prints its one
    // line whatever the format.
    let table_ok = matches!(cli.command, Command::Endpoint(_) | Command::Compaction(_));
    if format == Format::Table && !table_ok {
        return Err(Failure::new(
            exit::BAD_FEATURE,
            format!("table is not supported as output format for {name}"),
        ));
    }
    let work = match cli.command {
        Command::Defrag(args) => Work::Offline(offline::OfflineOp::defrag(args)),
        Command::Check(cmd) => Work::Offline(offline::OfflineOp::check(cmd)),
        command => Work::Online(prepare(command, format)?),
    };
    let options = ClientOptions {
        request_timeout: cli.command_timeout,
        connect_timeout: cli.dial_timeout,
    };
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| Failure::new(exit::ERROR, format!("cannot start the I/O executor: {e}")))?;
    match work {
        Work::Online(prepared) => {
            executor.run(execute(prepared, cli.endpoints, options, format, simple))
        }
        Work::Offline(op) => executor.run(offline::run(op, format)),
    }
}

/// What a command needs: a server, or only a data dir.
enum Work {
    Online(Prepared),
    Offline(offline::OfflineOp),
}

fn prepare(command: Command, format: Format) -> Result<Prepared, Failure> {
    Ok(match command {
        Command::Put(args) => {
            let value = match (&args.value, args.ignore_value) {
                (Some(v), _) => v.clone().into_vec(),
                (None, true) => Vec::new(),
                (None, false) => read_stdin_value()?,
            };
            Prepared::Kv(KvOp::Put(requests::put_request(&args, value)?))
        }
        Command::Get(args) => {
            if args.print_value_only && format != Format::Simple {
                return Err(Failure::new(
                    exit::BAD_ARGS,
                    "print-value-only is only for `--write-out=simple`",
                ));
            }
            Prepared::Kv(KvOp::Get {
                request: requests::get_request(&args)?,
                count_only: args.count_only,
                value_only: args.print_value_only,
            })
        }
        Command::Del(args) => Prepared::Kv(KvOp::Del(requests::del_request(&args)?)),
        Command::Txn(args) => {
            let stdin = std::io::stdin();
            let mut stdout = std::io::stdout();
            let prompts: Option<&mut dyn Write> = if args.interactive {
                Some(&mut stdout)
            } else {
                None
            };
            Prepared::Kv(KvOp::Txn(txn_input::read_txn(&mut stdin.lock(), prompts)?))
        }
        Command::Compaction(args) => Prepared::Kv(KvOp::Compaction {
            revision: args.revision,
            physical: args.physical,
        }),
        Command::Endpoint(EndpointCommand::Status) => Prepared::Status,
        Command::Endpoint(EndpointCommand::Health) => Prepared::Health,
        Command::Watch(args) => Prepared::Watch(watch::watch_request(&args)?),
        Command::Lease(cmd) => Prepared::Lease(lease::prepare(cmd)?),
        Command::Defrag(_) | Command::Check(_) => {
            return Err(Failure::new(
                exit::BAD_ARGS,
                "defrag and check work on a data dir, not through a server",
            ))
        }
    })
}

/// The value of `put KEY` without a value: all of stdin (etcdctl: `cat file | put key`).
fn read_stdin_value() -> Result<Vec<u8>, Failure> {
    let mut value = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_VALUE_BYTES + 1)
        .read_to_end(&mut value)
        .map_err(|e| Failure::new(exit::BAD_ARGS, format!("reading the value from stdin: {e}")))?;
    if value.len() as u64 > MAX_STDIN_VALUE_BYTES {
        return Err(Failure::new(
            exit::BAD_ARGS,
            format!("the value on stdin exceeds {MAX_STDIN_VALUE_BYTES} bytes"),
        ));
    }
    if value.is_empty() {
        return Err(Failure::new(
            exit::BAD_ARGS,
            "put command needs 1 argument and input from stdin or 2 arguments",
        ));
    }
    Ok(value)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`| head`): nothing left to tell anyone.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::new(exit::IO, "")),
        Err(e) => Err(Failure::new(exit::IO, format!("writing to stdout: {e}"))),
    }
}

fn request_failed(e: ClientError) -> Failure {
    Failure::new(exit::ERROR, e.to_string())
}

async fn connect(
    endpoints: &[impl AsRef<str>],
    options: &ClientOptions,
) -> Result<Client, Failure> {
    Client::connect(endpoints, options.clone(), Glommio)
        .await
        .map_err(|e| Failure::new(exit::BAD_CONNECTION, e.to_string()))
}

async fn execute(
    prepared: Prepared,
    endpoints: Vec<String>,
    options: ClientOptions,
    format: Format,
    simple: SimpleOptions,
) -> Result<(), Failure> {
    let op = match prepared {
        Prepared::Kv(op) => op,
        Prepared::Status => return endpoint_status(&endpoints, &options, format).await,
        Prepared::Health => return endpoint_health(&endpoints, &options, format).await,
        Prepared::Watch(req) => {
            let client = connect(&endpoints, &options).await?;
            return watch::run(&client, req, format, simple).await;
        }
        Prepared::Lease(op) => {
            let client = connect(&endpoints, &options).await?;
            return lease::execute(&client, op, format).await;
        }
    };
    let client = connect(&endpoints, &options).await?;
    let json = format == Format::Json;
    let out = match op {
        KvOp::Put(req) => {
            let (resp, header) = client.put(req).await.map_err(request_failed)?;
            if json {
                output::json_line(&output::json_put(&resp, &header))
            } else {
                output::simple_put(&resp, simple)
            }
        }
        KvOp::Get {
            request,
            count_only,
            value_only,
        } => {
            let (resp, header) = client.range(request).await.map_err(request_failed)?;
            if json {
                output::json_line(&output::json_range(&resp, &header))
            } else {
                let o = SimpleOptions {
                    value_only,
                    ..simple
                };
                output::simple_get(&resp, count_only, o)
            }
        }
        KvOp::Del(req) => {
            let (resp, header) = client.delete_range(req).await.map_err(request_failed)?;
            if json {
                output::json_line(&output::json_del(&resp, &header))
            } else {
                output::simple_del(&resp, simple)
            }
        }
        KvOp::Txn(req) => {
            let (resp, header) = client.txn(req).await.map_err(request_failed)?;
            if json {
                output::json_line(&output::json_txn(&resp, &header))
            } else {
                output::simple_txn(&resp, simple)
            }
        }
        KvOp::Compaction { revision, physical } => {
            client
                .compact(revision, physical)
                .await
                .map_err(request_failed)?;
            // etcdctl prints this line whatever the output format.
            format!("compacted revision {revision}\n").into_bytes()
        }
    };
    write_stdout(&out)
}

/// `endpoint status`: asks each endpoint separately; prints what it got, reports each
/// failure on stderr, and fails if any endpoint failed (with exit 2 if none was reachable).
async fn endpoint_status(
    endpoints: &[String],
    options: &ClientOptions,
    format: Format,
) -> Result<(), Failure> {
    let mut list = Vec::new();
    let mut unreachable = 0;
    for ep in endpoints {
        let result = match connect(std::slice::from_ref(ep), options).await {
            Ok(client) => client.status().await.map_err(request_failed),
            Err(f) => {
                unreachable += 1;
                Err(f)
            }
        };
        match result {
            Ok(status) => list.push(EndpointStatus {
                endpoint: ep.clone(),
                status,
            }),
            Err(f) => eprintln!("Failed to get the status of endpoint {ep} ({})", f.message),
        }
    }
    let out = match format {
        Format::Simple => output::simple_status(&list),
        Format::Json => output::json_line(&output::json_status(&list)),
        Format::Table => output::table_status(&list),
    };
    write_stdout(&out)?;
    if list.len() == endpoints.len() {
        Ok(())
    } else if unreachable == endpoints.len() {
        Err(Failure::new(exit::BAD_CONNECTION, ""))
    } else {
        Err(Failure::new(exit::ERROR, ""))
    }
}

/// Health of one endpoint: a linearizable read of "health" (it passes the raft read
/// barrier, so a member without a working quorum fails it), then no active alarm.
async fn check_health(endpoint: &str, options: &ClientOptions) -> EndpointHealth {
    let start = Instant::now();
    let unhealthy = |error: String| EndpointHealth {
        endpoint: endpoint.to_string(),
        healthy: false,
        took: start.elapsed(),
        error,
    };
    let client = match connect(&[endpoint], options).await {
        Ok(c) => c,
        Err(f) => return unhealthy(f.message),
    };
    let start = Instant::now();
    if let Err(e) = client.get("health").await {
        return unhealthy(e.to_string());
    }
    let took = start.elapsed();
    match client.status().await {
        Ok(s) if s.errors.is_empty() => EndpointHealth {
            endpoint: endpoint.to_string(),
            healthy: true,
            took,
            error: String::new(),
        },
        Ok(s) => unhealthy(format!("Active Alarm(s): {}", s.errors.join(", "))),
        Err(e) => unhealthy(format!("Unable to fetch the alarm list: {e}")),
    }
}

/// `endpoint health`: checks every endpoint concurrently; fails if any is unhealthy.
async fn endpoint_health(
    endpoints: &[String],
    options: &ClientOptions,
    format: Format,
) -> Result<(), Failure> {
    let checks = endpoints.iter().map(|ep| check_health(ep, options));
    let list = futures::future::join_all(checks).await;
    match format {
        Format::Simple => {
            let (ok, bad) = output::simple_health(&list);
            write_stdout(&ok)?;
            let _ = std::io::stderr().write_all(&bad);
        }
        Format::Json => write_stdout(&output::json_line(&output::json_health(&list)))?,
        Format::Table => write_stdout(&output::table_health(&list))?,
    }
    if list.iter().all(|h| h.healthy) {
        Ok(())
    } else {
        Err(Failure::new(exit::ERROR, "unhealthy cluster"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "corekvctl",
            "get",
            "k",
            "--endpoints=a:1,b:2",
            "-w",
            "json",
            "--command-timeout=1500ms",
        ])
        .unwrap();
        assert_eq!(cli.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(cli.write_out, Format::Json);
        assert_eq!(cli.command_timeout, Duration::from_millis(1500));
        assert_eq!(cli.dial_timeout, Duration::from_secs(2));
        let e = Cli::try_parse_from(["corekvctl", "get", "k", "--dial-timeout=0s"]).unwrap_err();
        assert!(e.use_stderr());
        let _: std::ffi::OsString = match Cli::try_parse_from(["corekvctl", "put", "k", "v"])
            .unwrap()
            .command
        {
            Command::Put(p) => p.key,
            other => panic!("{other:?}"),
        };
    }
}
