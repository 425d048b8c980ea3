//! The command line: parses arguments, calls the library, renders results,
//! and maps outcomes to exit codes (0 success or no changes, 1 error,
//! 2 changes present with `plan --detailed-exitcode`). The only layer that prints.

mod commands;
mod diff_text;
mod kube;
pub mod out;
mod progress;
mod reference;
mod render;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use ralph_engine::ops::{OpError, Session};
use ralph_stack::{Diagnostics, LoadOptions};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_CHANGES: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "ralph-deploy",
    version,
    about = "Plan and apply the Ralph Orchestrator's infrastructure from declarative stack files"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StackArgs {
    /// The stack file, e.g. stacks/aws-network.yaml
    pub stack: PathBuf,
    /// The environment to use (one of the stack's `environments`)
    #[arg(long, short = 'e', env = "RALPH_DEPLOY_ENV")]
    pub env: Option<String>,
    /// Set a variable: --var name=value (repeatable; wins over --var-file)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Read variables from a YAML file of `name: value` (repeatable; later
    /// files win; RALPH_DEPLOY_VAR_FILE names one too)
    #[arg(
        long = "var-file",
        value_name = "FILE",
        env = "RALPH_DEPLOY_VAR_FILE",
        value_delimiter = ','
    )]
    pub var_files: Vec<PathBuf>,
    /// Where the embedded state backend keeps state files [default:
    /// .ralph-deploy/state at the root of the stack file's repository (the
    /// nearest directory above it with .git), else beside the stack file:
    /// the same state from whatever directory the command runs in]
    #[arg(long, env = "RALPH_DEPLOY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// A shared state store instead of local files: s3://bucket/prefix
    /// (credentials from the AWS chain) or postgres://user@host/db (password
    /// from PGPASSWORD). Set RALPH_DEPLOY_STATE_KEY to encrypt.
    #[arg(long = "state", env = "RALPH_DEPLOY_STATE", value_name = "URL")]
    pub state: Option<String>,
    /// Wait this long for a lock another run holds (90s, 5m), saying who
    /// holds it, instead of failing at once
    #[arg(long, env = "RALPH_DEPLOY_LOCK_TIMEOUT", value_name = "DURATION", value_parser = parse_wait)]
    pub lock_timeout: Option<std::time::Duration>,
}

/// A variables file: a YAML mapping of variable names to values; strings,
/// numbers and booleans as they are, lists and maps as JSON (the form
/// `--var` takes them in).
fn read_var_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = ralph_core::files::read_text_bounded(path, 1 << 20)
        .map_err(|e| anyhow::anyhow!("--var-file {}: {e}", path.display()))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--var-file {}: {e}", path.display()))?;
    let map = match doc {
        serde_yaml_ng::Value::Mapping(m) => m,
        serde_yaml_ng::Value::Null => return Ok(Vec::new()),
        _ => anyhow::bail!(
            "--var-file {}: expected a mapping of variable names to values, such as `region: us-east-1`",
            path.display()
        ),
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let serde_yaml_ng::Value::String(name) = k else {
            anyhow::bail!(
                "--var-file {}: every key must be a variable name (a string)",
                path.display()
            );
        };
        let value = match v {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            serde_yaml_ng::Value::Null => String::new(),
            other => serde_json::to_string(&other)
                .map_err(|e| anyhow::anyhow!("--var-file {}: `{name}`: {e}", path.display()))?,
        };
        out.push(format!("{name}={value}"));
    }
    Ok(out)
}

/// How `check` prints its findings.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckFormat {
    Text,
    Json,
    Sarif,
}

/// How a plan is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

/// `--target` and `--exclude` of plan, apply and destroy.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SelectArgs {
    /// Only this resource and what it needs (repeatable): an address, a
    /// `for_each` resource (all its instances) or a component
    #[arg(
        long = "target",
        value_name = "ADDRESS",
        env = "RALPH_DEPLOY_TARGET",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,
    /// Leave this resource out, and what needs it (repeatable)
    #[arg(
        long = "exclude",
        value_name = "ADDRESS",
        env = "RALPH_DEPLOY_EXCLUDE",
        value_delimiter = ','
    )]
    pub excludes: Vec<String>,
    /// Replace this resource although nothing forces it (repeatable; plan
    /// and apply)
    #[arg(
        long = "replace",
        value_name = "ADDRESS",
        env = "RALPH_DEPLOY_REPLACE",
        value_delimiter = ','
    )]
    pub replace: Vec<String>,
    /// Read the cloud before planning; --refresh=false plans from the state
    /// alone (fast, but blind to changes made outside ralph-deploy)
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        env = "RALPH_DEPLOY_REFRESH"
    )]
    pub refresh: bool,
    /// Only bring the state up to date with the cloud (drift accepted, gone
    /// resources forgotten); nothing in the cloud changes
    #[arg(long, env = "RALPH_DEPLOY_REFRESH_ONLY")]
    pub refresh_only: bool,
}

impl SelectArgs {
    /// What a plan of this run covers and how it is made.
    pub fn scope(&self) -> ralph_engine::plan::Scope {
        ralph_engine::plan::Scope {
            selection: self.selection(),
            replace: self.replace.clone(),
            refresh: self.refresh,
        }
    }

    /// Whether any of these options that a saved plan fixes was given.
    pub fn any(&self) -> bool {
        !self.selection().is_empty()
            || !self.replace.is_empty()
            || !self.refresh
            || self.refresh_only
    }

    pub fn selection(&self) -> ralph_engine::plan::Selection {
        ralph_engine::plan::Selection {
            targets: self.targets.clone(),
            excludes: self.excludes.clone(),
        }
    }
}

/// `90s`, `5m`, `1h`, `1h30m`, or plain seconds.
fn parse_wait(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a duration; write 90s, 5m or 1h30m"))?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => {
                return Err(format!(
                    "`{text}` is not a duration; write 90s, 5m or 1h30m"
                ))
            }
        };
    }
    if !num.is_empty() {
        return Err(format!(
            "`{text}` is not a duration; write 90s, 5m or 1h30m"
        ));
    }
    Ok(std::time::Duration::from_secs(total))
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ReferencePage {
    Commands,
    Stack,
    /// The rules of `check`
    Rules,
    /// The stack language: keys, expressions, functions, types
    Language,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    /// SVG drawn by Graphviz's `dot`, which must be on PATH
    Svg,
    /// Nodes with their kind and dependencies, for tools (the benchmarks
    /// compute the critical path from it).
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Adopt a resource made outside the tool (a VPC, a database made by
    /// hand) into the state at an address the stack declares; the next plan
    /// shows only real differences, and the next apply adds its ownership tags
    Import {
        #[command(flatten)]
        args: StackArgs,
        /// The address in the stack, e.g. vpc or 'private["a"]'
        address: String,
        /// The cloud id: vpc-..., a database identifier, a bucket name, an ARN
        id: String,
    },
    /// Check a stack file without contacting any cloud
    Validate {
        #[command(flatten)]
        args: StackArgs,
        /// Print problems as JSON
        #[arg(long)]
        json: bool,
    },
    /// Hold the stack against the deployment guide's production checklist
    /// and the clouds' own rules (reachable stores, supported versions,
    /// nothing open to the internet, backups, encryption, ...) without
    /// contacting any cloud. Each finding names its rule, file, line and
    /// column; `plan` shows the same findings, and `apply` refuses while an
    /// error is not waived in the stack's `waivers:`. Exit 1 on such an error
    Check {
        #[command(flatten)]
        args: StackArgs,
        /// text, json, or sarif (SARIF 2.1.0, for code scanning)
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        /// Judge support windows and waivers' ends at this date
        /// (YYYY-MM-DD; default: today): will the stack still pass then?
        #[arg(long, value_name = "DATE")]
        date: Option<chrono::NaiveDate>,
        /// Custom rules in Rego beside the stack's own `policies:` (a .rego
        /// file or a directory of them; repeatable): packages under
        /// `ralph`, whose `deny` and `warn` rules give errors and warnings
        #[arg(long, value_name = "PATH")]
        policy: Vec<PathBuf>,
    },
    /// Show what apply would change
    Plan {
        #[command(flatten)]
        args: StackArgs,
        /// Print the plan as JSON (the same as --format json)
        #[arg(long)]
        json: bool,
        /// text, json, or markdown (a pull-request comment)
        #[arg(
            long,
            value_enum,
            default_value = "text",
            env = "RALPH_DEPLOY_PLAN_FORMAT"
        )]
        format: PlanFormat,
        /// Exit 2 when there are changes, 0 when there are none, 1 on error
        #[arg(long)]
        detailed_exitcode: bool,
        /// Save the plan, for `apply FILE`
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Plan the destruction of everything the stack manages
        #[arg(long)]
        destroy: bool,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Make the changes: from a stack file (plans first) or a saved plan file
    #[command(mut_arg("stack", |a| a.value_name("STACK|PLANFILE").help("The stack file (a plan is made and shown first), or a plan saved by `plan --out FILE`")))]
    Apply {
        #[command(flatten)]
        args: StackArgs,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Print the orchestrator's Kubernetes manifests, as apply would send them
    Render {
        #[command(flatten)]
        args: StackArgs,
        /// Only this resource (default: every kubernetes.orchestrator)
        #[arg(long)]
        resource: Option<String>,
        /// Pick API versions by asking the cluster, instead of those of a current Kubernetes
        #[arg(long)]
        discover: bool,
    },
    /// Roll out a new orchestrator image and change nothing else, then wait for the rollout
    Deploy {
        #[command(flatten)]
        args: StackArgs,
        /// A tag (1.4.2) or a full reference (registry/repository:tag)
        #[arg(long)]
        image: String,
        /// Only this resource (default: every kubernetes.orchestrator)
        #[arg(long)]
        resource: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Roll the orchestrator back to the release before the current one
    Rollback {
        #[command(flatten)]
        args: StackArgs,
        /// Only this resource (default: every kubernetes.orchestrator)
        #[arg(long)]
        resource: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Delete everything the stack manages, dependents first
    #[command(mut_arg("stack", |a| a.value_name("STACK|PLANFILE").help("The stack file, or a plan saved by `plan --destroy --out FILE`")))]
    Destroy {
        #[command(flatten)]
        args: StackArgs,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Print the stack's outputs
    Output {
        #[command(flatten)]
        args: StackArgs,
        /// Only this output
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Inspect the recorded state
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Print the dependency graph
    Graph {
        #[command(flatten)]
        args: StackArgs,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        /// Colour the nodes by what this saved plan does (+ create, ~ update,
        /// -/+ replace, - delete)
        #[arg(long, value_name = "PLANFILE")]
        plan: Option<PathBuf>,
    },
    /// Remove a lock left behind by a run that died
    ForceUnlock {
        #[command(flatten)]
        args: StackArgs,
        /// The lock id, as printed by the run that found the lock
        lock_id: String,
    },
    /// Print a saved plan (from `plan --out`), after checking its digest and signature
    Show {
        /// The plan file
        plan: PathBuf,
        /// text, json, or markdown (a pull-request comment)
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
    /// Print a shell completion script: `ralph-deploy completions bash >
    /// /etc/bash_completion.d/ralph-deploy` (zsh: into a directory on $fpath
    /// as _ralph-deploy; fish: ~/.config/fish/completions/ralph-deploy.fish)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: Option<clap_complete::Shell>,
    },
    /// Print the manual page (roff): `ralph-deploy man > ralph-deploy.1`
    Man,
    /// Cluster add-ons given by URL (upstream release manifests)
    Addons {
        #[command(subcommand)]
        command: AddonsCommand,
    },
    /// Rewrite stack and component files in the canonical layout (two
    /// spaces per level, no trailing whitespace, single blank lines),
    /// keeping comments, order and quoting; a file whose meaning would
    /// change is left as it is
    Fmt {
        /// Files, or directories to search for stack and component files
        /// (*.yaml and *.yml with `resources` or `components`; other YAML,
        /// such as workflows and manifests, is skipped)
        #[arg(default_value = ".")]
        paths: Vec<PathBuf>,
        /// Change nothing: list the files that are not formatted and exit 3
        /// when there are any (for CI)
        #[arg(long)]
        check: bool,
        /// Print what would change as a unified diff (instead of the file
        /// names); with --check, change nothing
        #[arg(long)]
        diff: bool,
    },
    /// Print a reference page in Markdown, as docs/ has it: `commands`
    /// (every command and option) or `stack` (every kind's properties and
    /// attributes)
    Reference {
        #[arg(value_enum)]
        page: ReferencePage,
    },
    /// Print the JSON Schema of stack files (or of component files)
    Schema {
        /// The schema of component files (components/*.yaml)
        #[arg(long)]
        component: bool,
    },
    /// Check a deployed environment end to end: the orchestrator's
    /// Deployment at the recorded release, /health through the cluster, and
    /// the pods' own credentials logging in to the database (SELECT 1 and an
    /// audit-log write) and to Redis (AUTH and PING). Exit 1 when unhealthy.
    Status {
        #[command(flatten)]
        args: StackArgs,
        /// One JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
    /// A consistent pg_dump of the stack's database, streamed compressed
    /// into its backup bucket (with a manifest of row counts and checksums
    /// per table); backups older than the bucket's expire_after_days are
    /// removed
    Backup {
        #[command(flatten)]
        args: StackArgs,
        #[command(flatten)]
        pick: BackupPick,
        /// Keep backups this many days instead of the bucket's expire_after_days
        #[arg(long)]
        retention_days: Option<i64>,
        /// Also take the cloud's own backup of the primary: an RDS snapshot (started), a Cloud SQL on-demand backup (waited for)
        #[arg(long)]
        snapshot: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into a new database on the same server and check
    /// every table's rows against the backup's manifest
    Restore {
        #[command(flatten)]
        args: StackArgs,
        /// The backup: its key, or its file name (20261127T030000Z.dump)
        backup: String,
        /// The new database (default: <database>_restored_<time>)
        #[arg(long)]
        into: Option<String>,
        #[command(flatten)]
        pick: BackupPick,
        #[arg(long)]
        json: bool,
    },
    /// Promote the database's read replica to primary: checks its lag
    /// against the stack's recovery.rpo, moves the old primary aside
    /// (renamed, untagged, kept), gives the promoted instance the primary's
    /// name, records the new topology (the next plan creates a new replica)
    /// and rolls the orchestrator's pods onto it. An interrupted failover
    /// is finished by running it again.
    Failover {
        #[command(flatten)]
        args: StackArgs,
        /// The replica to promote (its address), when the stack has several
        #[arg(long)]
        replica: Option<String>,
        /// Promote even when the replica lags more than the RPO or its lag is unknown
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (for CI)
        #[arg(long)]
        auto_approve: bool,
        /// Print events and the result as JSON lines
        #[arg(long)]
        json: bool,
    },
    /// Database schema migrations
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Database maintenance
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

/// Which database and bucket, when the stack has more than one.
#[derive(clap::Args, Debug, Clone)]
pub struct BackupPick {
    /// The postgres.migrations resource that names the database
    #[arg(long)]
    pub database: Option<String>,
    /// The bucket resource (aws.s3_bucket or gcp.storage_bucket) to keep backups in
    #[arg(long)]
    pub bucket: Option<String>,
}

impl From<BackupPick> for ralph_engine::ops::backup::BackupOptions {
    fn from(pick: BackupPick) -> Self {
        Self {
            bucket: pick.bucket,
            database: pick.database,
            ..Default::default()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Which migrations are applied, pending or edited, per migrations resource
    Status {
        #[command(flatten)]
        args: StackArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AddonsCommand {
    /// Download each file once and print it pinned (`URL#sha256=...`) for
    /// a stack's add-on list, as `terraform providers lock` records hashes;
    /// the file stays in the cache (path on stderr) for you to review, and
    /// plans read it from there
    Pin {
        /// https URLs (plain http only from this machine)
        #[arg(required = true)]
        urls: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Create the monthly partitions of the next months ahead of time
    /// (run it from cron or a Kubernetes CronJob)
    Partitions {
        #[command(flatten)]
        args: StackArgs,
        /// How many months after the current one
        #[arg(long, default_value_t = 3)]
        months_ahead: i32,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Do not ask for confirmation (for CI)
    #[arg(long)]
    pub auto_approve: bool,
    /// How many resources may change at the same time
    #[arg(long, default_value_t = 10)]
    pub parallelism: usize,
    /// Allow deleting or replacing resources marked `protect: true`
    #[arg(long)]
    pub allow_protected: bool,
    /// Print events and the summary as JSON lines
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// List recorded resources
    List {
        #[command(flatten)]
        args: StackArgs,
    },
    /// Show one recorded resource
    Show {
        #[command(flatten)]
        args: StackArgs,
        address: String,
    },
    /// List the copies of the state kept from before each apply, destroy,
    /// deploy and rollback (the newest 30)
    Snapshots {
        #[command(flatten)]
        args: StackArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make a kept snapshot the current state again (as a new serial, under
    /// the lock); the current state is kept as a snapshot first
    Restore {
        #[command(flatten)]
        args: StackArgs,
        /// The snapshot's name, or its serial (as `state snapshots` lists them)
        snapshot: String,
    },
    /// Print the current state as JSON (to keep a copy, or to edit and push)
    Pull {
        #[command(flatten)]
        args: StackArgs,
    },
    /// Make a state file the current state, under the lock. An older serial
    /// or another lineage is refused unless --force
    Push {
        #[command(flatten)]
        args: StackArgs,
        /// The state file (JSON, as `state pull` prints it)
        file: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Forget resources (the cloud is not touched). The resources keep their
    /// ownership tags: remove those too, or the next plan finds them again
    Rm {
        #[command(flatten)]
        args: StackArgs,
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Rename a state entry (or everything under a component or for_each
    /// address), as a `moved` entry in the stack would
    Mv {
        #[command(flatten)]
        args: StackArgs,
        from: String,
        to: String,
    },
    /// Rewrite the state sealed with the current key (RALPH_DEPLOY_STATE_KEY
    /// or RALPH_DEPLOY_STATE_KMS_KEY), reading it with the current or the
    /// previous one (RALPH_DEPLOY_STATE_OLD_KEY); also turns encryption on
    Rekey {
        #[command(flatten)]
        args: StackArgs,
    },
    /// Copy the current state to another store (postgres://... or a
    /// directory), holding the locks of both
    Migrate {
        #[command(flatten)]
        args: StackArgs,
        /// The store to move to
        #[arg(long, value_name = "URL|DIR")]
        to: String,
    },
}

pub fn main() -> i32 {
    // SIGPIPE stays ignored (Rust's default): output piped into `head`
    // ends the output (cli::out), never the run, which finishes and unlocks.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(message) = single_dash_long_option(&args) {
        eprintln!("error: {message}");
        // A usage error, as clap's own.
        return 2;
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            if let Some(message) = other_tools_spelling(&e) {
                eprintln!("error: {message}");
                return 2;
            }
            e.exit()
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("RALPH_DEPLOY_LOG").unwrap_or_else(|_| {
            // Only this tool's own warnings: the libraries' log lines
            // (the Kubernetes client's connection errors, the AWS
            // credential chain's attempts) repeat what the tool's own
            // message says, naming the party and the setting.
            // RALPH_DEPLOY_LOG=warn (or debug, ...) shows them.
            tracing_subscriber::EnvFilter::new("off,ralph_deploy=warn")
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // Several TLS stacks are linked (the cloud SDKs', the Kubernetes
    // client's): name the one rustls uses, once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let result = runtime.block_on(commands::run(cli.command));
    // The proxy pods of private stores reached through the cluster.
    runtime.block_on(ralph_engine::ops::close_connections());
    progress::finish();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_ERROR
        }
    }
}

/// Options other tools spell differently (`apply --yes`, `--dry-run`): the
/// spelling that works here, instead of clap's tip about `-- --yes`.
fn other_tools_spelling(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let name = arg.split('=').next().unwrap_or(arg);
    let instead = match name {
        "--yes" | "-y" | "--assume-yes" | "--force" | "--approve" => {
            "write `--auto-approve` (apply, destroy, deploy, rollback and failover take it)"
        }
        "--dry-run" | "--check" | "--diff" => {
            "to see what would change without changing it, run `ralph-deploy plan STACK`"
        }
        "--environment" | "--workspace" => "write `--env NAME` (or set RALPH_DEPLOY_ENV)",
        "--vars-file" | "--values" | "-f" => "write `--var-file FILE`",
        "--output" | "-o" => "write `--out FILE` (plan) or `--format json` / `--json`",
        _ => return None,
    };
    Some(format!(
        "unexpected argument `{arg}`: {instead}. Nothing was done"
    ))
}

/// Terraform habits spell long options with one dash (`-out=prod.plan`,
/// `-auto-approve`), which clap reads as a cluster of short flags and
/// answers with a tip about `-o`. Such an argument, when its name is one of
/// our long options, is named with the spelling that works.
fn single_dash_long_option(args: &[std::ffi::OsString]) -> Option<String> {
    use clap::CommandFactory;
    fn longs(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for a in cmd.get_arguments() {
            if let Some(l) = a.get_long() {
                out.insert(l.to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            longs(sub, out);
        }
    }
    // Most command lines have no such argument: only then is the command
    // tree walked for the names.
    let looks_long = |a: &std::ffi::OsString| {
        a.to_str()
            .is_some_and(|a| a.len() > 2 && a.starts_with('-') && !a.starts_with("--"))
    };
    if !args.iter().skip(1).any(looks_long) {
        return None;
    }
    let mut known = std::collections::BTreeSet::new();
    longs(&Cli::command(), &mut known);
    for a in args.iter().skip(1) {
        let a = a.to_str()?;
        if a == "--" {
            return None;
        }
        let Some(rest) = a.strip_prefix('-') else {
            continue;
        };
        if rest.starts_with('-') || rest.len() < 2 {
            continue;
        }
        let name = rest.split('=').next().unwrap_or(rest);
        if known.contains(name) {
            return Some(format!(
                "`{a}`: options take two dashes here: write `-{a}`. Nothing was done"
            ));
        }
    }
    None
}

impl StackArgs {
    /// The variables of `--var-file`s then `--var`s, as `name=value` (a
    /// later one wins): what a saved plan records.
    pub(crate) fn all_vars(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for file in &self.var_files {
            out.extend(read_var_file(file)?);
        }
        out.extend(self.vars.iter().cloned());
        Ok(out)
    }

    pub(crate) fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let mut variables = Vec::new();
        // RALPH_DEPLOY_VAR_<name>=value, for CI; --var wins over it.
        let env_variables = std::env::vars()
            .filter_map(|(k, v)| {
                Some((k.strip_prefix("RALPH_DEPLOY_VAR_")?.to_ascii_lowercase(), v))
            })
            .collect();
        for v in self.all_vars()? {
            let Some((k, val)) = v.split_once('=') else {
                anyhow::bail!("--var {v}: write it as --var name=value");
            };
            variables.push((k.trim().to_string(), val.to_string()));
        }
        Ok(LoadOptions {
            environment: self.env.clone(),
            variables,
            env_variables,
        })
    }

    /// Loads and validates the stack; on problems prints them and fails.
    pub(crate) fn session(&self, json: bool) -> Result<Session, CliError> {
        let options = self.load_options().map_err(CliError::Other)?;
        let location = match (&self.state, &self.state_dir) {
            (Some(url), _) => ralph_engine::ops::StateLocation::Url(url.clone()),
            (None, Some(dir)) => ralph_engine::ops::StateLocation::Dir(dir.clone()),
            (None, None) => ralph_engine::ops::StateLocation::Dir(
                ralph_engine::state::local::default_dir(&self.stack),
            ),
        };
        let mut s = Session::load(&self.stack, &options, &location).map_err(|e| match e {
            ralph_engine::ops::LoadError::Stack(d) => CliError::Invalid(*d, json),
            ralph_engine::ops::LoadError::State(e) => CliError::Other(anyhow::anyhow!(e)),
        })?;
        if let (None, None, ralph_engine::ops::StateLocation::Dir(dir)) =
            (&self.state, &self.state_dir, &location)
        {
            // Before, the default was relative to the current directory: a
            // state left there for this stack is named, not silently
            // replaced by a second, empty one.
            let here = std::path::Path::new(".ralph-deploy/state");
            let same = |a: &std::path::Path, b: &std::path::Path| {
                std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
            };
            let old = here.join(&s.stack.name).join(&s.stack.environment);
            if old.join("state.json").exists() && !same(here, dir) {
                let new = dir.join(&s.stack.name).join(&s.stack.environment);
                let fix = if new.exists() {
                    "compare the two and keep one".to_string()
                } else {
                    format!(
                        "if the older one is what your applies used, move it there first: mkdir -p {} && mv {} {}",
                        dir.join(&s.stack.name).display(),
                        old.display(),
                        new.display()
                    )
                };
                eprintln!(
                    "warning: stack `{}` environment `{}` has a state at {} (relative to the current directory), but this stack's state is at {} (found from the stack file, whatever the current directory): {fix}",
                    s.stack.name,
                    s.stack.environment,
                    old.display(),
                    new.display(),
                );
            }
        }
        s.lock_timeout = self.lock_timeout;
        Ok(s)
    }
}

#[derive(Debug)]
pub(crate) enum CliError {
    Invalid(Diagnostics, bool),
    Other(anyhow::Error),
}

impl From<OpError> for CliError {
    fn from(e: OpError) -> Self {
        CliError::Other(anyhow::Error::new(e))
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Other(e)
    }
}
