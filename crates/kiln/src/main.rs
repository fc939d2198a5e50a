//! `kiln`: the command line. Parsing arguments, progress and exit codes only;
//! the work happens in the library crates.

/// `println!` / `eprintln!` / `eprint!` that never panic: a closed pipe
/// (`kiln lock --json … | head -1`, a CI log collector gone away) is not a crash.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
macro_rules! errw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

mod catalog;
mod cmd;
mod convert;
mod diff;
mod ls;
mod publish;
mod rebuild;
mod release;

/// `--machine-id`: 32 lowercase hex digits, as /etc/machine-id holds.
fn parse_machine_id(s: &str) -> Result<String, String> {
    if s.len() == 32
        && s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && s.bytes().any(|c| c != b'0')
    {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` is not a machine id: 32 lowercase hex digits, not all zero (as /etc/machine-id holds)"))
    }
}
mod shell;
mod show;
mod test;
mod ui;
mod upgrade;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Fire Debian package archives into verifiable system images"
)]
struct Cli {
    /// Print only errors on stderr (no progress, no warnings).
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print every step with the seconds since the start.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// Colour on stderr: `auto` (on a terminal, unless NO_COLOR is set), `always` or `never`.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    color: ui::ColorChoice,
    /// Progress on stderr: `auto` (lines, a bar on a terminal) or `json` (one event per line).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "auto")]
    progress: ProgressFormat,
    /// The catalog every build is recorded in: an SQLite file (default $XDG_DATA_HOME/kiln/catalog.sqlite, else ~/.local/share/kiln/catalog.sqlite), a PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DATABASE), or `none`.
    #[arg(long, global = true, value_name = "PATH", env = "KILN_CATALOG")]
    catalog: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Record every build output directory found below each DIR (the catalog is an index: this rebuilds it).
    Import {
        /// Directories to search for build outputs (links are not followed), or download trees written by kiln publish.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The public key (SPKI PEM) that signs the download trees among DIRS; required for trees.
        #[arg(long, value_name = "KEY.pub")]
        key: Option<PathBuf>,
    },
}

/// Where packages come from, for commands that read the archive.
#[derive(Args, Clone, Default)]
pub struct SourceArgs {
    /// Use only the local index cache; never touch the network.
    #[arg(long)]
    pub offline: bool,
    /// Debian mirror to use instead of the one in the host's apt sources.
    #[arg(long, value_name = "URI")]
    pub mirror: Option<String>,
    /// Security mirror to use instead of the one in the host's apt sources.
    #[arg(long, value_name = "URI")]
    pub security_mirror: Option<String>,
    /// Cache directory (default: $KILN_CACHE_DIR, $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Accept a Release file older than the cached one or the one in the existing lock (an intended rollback).
    #[arg(long)]
    pub allow_older_release: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProgressFormat {
    Auto,
    Json,
}

impl SourceArgs {
    fn options(&self) -> kiln_build::SourceOptions {
        kiln_build::SourceOptions {
            offline: self.offline,
            mirror: self.mirror.clone(),
            security_mirror: self.security_mirror.clone(),
            cache_dir: self.cache_dir.clone(),
            allow_older_release: self.allow_older_release,
        }
    }
}

/// EX_USAGE from sysexits.h: the command line was wrong.
pub(crate) const EX_USAGE: u8 = 64;

#[derive(Subcommand)]
enum Command {
    /// Resolve a recipe into its lock, NAME.lock beside NAME.toml (every package, version and sha256).
    Lock {
        /// The recipe file.
        recipe: PathBuf,
        /// Do not resolve: fail if the lock does not match the recipe.
        #[arg(long)]
        check: bool,
        /// Update only these locked packages (and what they need at other versions); every other package keeps its locked version.
        #[arg(long, value_name = "PKG", num_args = 1.., conflicts_with = "check")]
        update: Vec<String>,
        /// Print the resolution as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// Build the recipe's artifacts (locking and fetching first if needed).
    Build {
        /// The recipe to build (NAME.toml; its lock is NAME.lock beside it).
        recipe: PathBuf,
        /// Output directory (default: [output] directory, else out/<name> beside the recipe).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Refuse to (re)create the lock: it must exist and match the recipe.
        #[arg(long)]
        locked: bool,
        /// Build twice and fail if the artifacts differ.
        #[arg(long)]
        check_reproducible: bool,
        /// Timestamp for the build (default: $SOURCE_DATE_EPOCH, else the lock's newest Release date).
        #[arg(long, value_name = "SECONDS")]
        source_date_epoch: Option<i64>,
        /// Ed25519 private key (PKCS#8 PEM) to sign provenance.json with.
        #[arg(long, value_name = "KEY.pem", env = "KILN_SIGN_KEY")]
        sign_key: Option<PathBuf>,
        /// The image version (default: [image] version); an [update] image's machines take newer versions, ordered as systemd orders them.
        #[arg(long, value_name = "VERSION")]
        image_version: Option<String>,
        /// Print the build's manifest.json on stdout (docs/manifest.md; schema: docs/schemas/manifest.schema.json).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// Check a build's outputs against its provenance, signature and SBOMs, or a download tree against its signed channel documents.
    Verify {
        /// The output directory of `kiln build`, or a download tree written by `kiln publish --to file://…`.
        dir: PathBuf,
        /// The signer's public key (SPKI PEM); required for signed provenance and for download trees.
        #[arg(long, value_name = "KEY.pub")]
        key: Option<PathBuf>,
        /// In a download tree, check only this channel (repeatable; default: every channel).
        #[arg(long = "channel", value_name = "CHANNEL")]
        channels: Vec<String>,
        /// The lock the SBOMs must match (default: the lock named in manifest.json).
        #[arg(long)]
        lock: Option<PathBuf>,
        /// Print the verification report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Where the lock's Release files and indexes are read from, to prove it.
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// Push an OCI image layout to a registry.
    Push {
        /// The OCI layout directory (DIR/oci of a build), or a build's output directory DIR.
        layout: PathBuf,
        /// HOST[:PORT]/REPOSITORY[:TAG]; without a tag, the tags the layout gives its image (the recipe's version and latest).
        reference: String,
        /// Another tag to push the same image under (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Print what was pushed as JSON on stdout (schema: docs/schemas/push.schema.json).
        #[arg(long)]
        json: bool,
        /// Plain HTTP (for registries on loopback).
        #[arg(long)]
        insecure: bool,
        /// Registry user (password from $KILN_REGISTRY_PASSWORD; default user $KILN_REGISTRY_USER; else the Docker client configuration, $DOCKER_CONFIG/config.json or ~/.docker/config.json).
        #[arg(long)]
        username: Option<String>,
    },
    /// Publish builds to download trees, registries and clouds (aws://), checked against their manifests first.
    Publish(publish::PublishArgs),
    /// Convert a raw UEFI disk into a cloud's import format: Azure's fixed VHD or GCE's tar.gz.
    Convert(convert::ConvertArgs),
    /// Roll a published [update] version out in its channel: a wave of machines growing over time, paused, resumed, or a barrier.
    Release(release::ReleaseArgs),
    /// Test a disk image: static checks, then a boot in QEMU running the recipe's [[test]] commands.
    Test {
        /// A disk image (disk.raw or disk.qcow2), a build's output directory, or a recipe (its image and [[test]] entries).
        #[arg(required_unless_present = "upgrade")]
        target: Option<PathBuf>,
        /// Boot OLD (a build of an [update] image), serve NEW's channel on loopback and pass when the machine updates itself to NEW, keeping OLD as its fallback.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with_all = ["target", "skip_boot", "skip_static"])]
        upgrade: Vec<PathBuf>,
        /// With --upgrade: pass when NEW fails its health gate and the machine goes back to OLD by itself (and does not install NEW again).
        #[arg(long, requires = "upgrade")]
        expect_rollback: bool,
        /// With --upgrade (a test aid): break the served channel after signing it; passes when the machine refuses it and stays on OLD.
        #[arg(
            long,
            value_name = "FAULT",
            requires = "upgrade",
            conflicts_with = "expect_rollback"
        )]
        channel_fault: Option<upgrade::Fault>,
        /// With --upgrade: release NEW in the served channel with this wave (P%/DURATION, as kiln release takes it; default 100%).
        #[arg(long, value_name = "P%/DURATION", value_parser = kiln_model::rollout::parse_wave, requires = "upgrade")]
        wave: Option<kiln_model::rollout::Wave>,
        /// With --upgrade: the machine's id (32 hex digits, given to systemd as a credential), which places it in the wave.
        #[arg(long, value_name = "ID", value_parser = parse_machine_id, requires = "upgrade")]
        machine_id: Option<String>,
        /// With --upgrade: pass when the wave does not admit the machine and it stays on OLD.
        #[arg(long, requires = "upgrade", conflicts_with_all = ["expect_rollback", "channel_fault"])]
        expect_held: bool,
        /// With --upgrade (a test aid): the server goes away midway through the first payload download; passes when the next attempt completes the update.
        #[arg(long, requires = "upgrade", conflicts_with_all = ["expect_rollback", "channel_fault", "expect_held"])]
        cut_download: bool,
        /// With --upgrade: the key the images were built with; it signs the channel served to the machine.
        #[arg(
            long,
            value_name = "KEY.pem",
            env = "KILN_SIGN_KEY",
            requires = "upgrade"
        )]
        sign_key: Option<PathBuf>,
        /// Seconds to wait for the booted guest's results.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Only boot (no static checks).
        #[arg(long, conflicts_with = "skip_boot")]
        skip_static: bool,
        /// Only the static checks (no QEMU).
        #[arg(long)]
        skip_boot: bool,
        /// A regular (uid >= 1000) account the image may contain; repeatable.
        #[arg(long, value_name = "USER")]
        allow_user: Vec<String>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 1536)]
        memory: u32,
        /// Guest CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Print the results as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Boot a disk image in QEMU with its serial console on this terminal.
    Boot {
        /// A disk image (disk.raw or disk.qcow2) or a build's output directory.
        image: PathBuf,
        /// Write changes to the image (default: a throwaway overlay).
        #[arg(long)]
        persist: bool,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 1536)]
        memory: u32,
        /// Guest CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Host port forwarded to the guest's SSH port.
        #[arg(long, default_value_t = 2222)]
        ssh_port: u16,
        /// Seconds after which the guest is stopped (0: never).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Download every package of the recipe's lock into the cache (locking first if needed).
    Fetch {
        /// The recipe whose lock's packages to download.
        recipe: PathBuf,
        /// Refuse to (re)create the lock: it must exist and match the recipe.
        #[arg(long)]
        locked: bool,
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// Write a starter recipe to begin from.
    Init {
        /// The recipe file to write (default: kiln.toml); an existing file is never overwritten.
        #[arg(default_value = "kiln.toml")]
        path: PathBuf,
        /// The image name (default: the file name without .toml).
        #[arg(long)]
        name: Option<String>,
        /// The Debian suite (default: the host's).
        #[arg(long)]
        suite: Option<String>,
        /// A distroless container image (no shell, no package manager) instead of a bootable cloud disk.
        #[arg(long)]
        distroless: bool,
    },
    /// Print a shell completion script (e.g. `kiln completion bash > /etc/bash_completion.d/kiln`).
    Completion {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `kiln man > /usr/local/share/man/man1/kiln.1`).
    Man,
    /// List a build's packages (biggest first), its files (--files), or the package that owns a path (--owner).
    Ls {
        /// A build's output directory.
        dir: PathBuf,
        /// List the image's files, biggest first, from its rootfs tarball or OCI image.
        #[arg(long, conflicts_with = "owner")]
        files: bool,
        /// Name the package(s) that own this path in the image.
        #[arg(long, value_name = "PATH")]
        owner: Option<String>,
        /// Which image of a multi-architecture build (default: the first).
        #[arg(long)]
        arch: Option<String>,
        /// Print the list as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A shell (or one command) in a built image, in the build sandbox, on a throwaway copy.
    Shell {
        /// A build's output directory, a rootfs tarball, or an OCI layout.
        target: PathBuf,
        /// Which image of a multi-architecture build (default: the first; for an OCI layout, the host's).
        #[arg(long)]
        arch: Option<String>,
        /// Share the host's network (default: loopback only).
        #[arg(long)]
        network: bool,
        /// The command to run instead of a shell (after `--`); its exit status is kiln's.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Find image versions in the catalog by name, suite, architecture, format or package version.
    Find(catalog::FindArgs),
    /// What changed between two locks, recipes, build output directories or catalog versions (NAME@VERSION): packages, source versions, installed size, artifacts.
    Diff {
        /// The older side.
        a: String,
        /// The newer side.
        b: String,
        /// Print the changes as JSON on stdout (schema: docs/schemas/diff.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// Which images have newer packages in their suite, -updates or -security; exits 0 (none), 1 (updates), 2 (security updates), 3 (could not check).
    Watch(watch::WatchArgs),
    /// Manage the catalog of images.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Show the composed recipe, the file that set each value, and what a build would do (packages, sizes, outputs).
    Show {
        /// The recipe file.
        recipe: PathBuf,
        /// Do not resolve when the lock is missing or out of date (no packages in the plan).
        #[arg(long)]
        no_resolve: bool,
        /// Print the recipe, its settings and the plan as JSON on stdout (schema: docs/schemas/show.schema.json).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sources: SourceArgs,
    },
    /// The image finder: a web page and a JSON API over the catalog, or the same as static files.
    Serve {
        /// Address to listen on (loopback by default; 0 as the port picks a free one).
        #[arg(
            long,
            value_name = "ADDR",
            default_value = "127.0.0.1:8080",
            conflicts_with = "export"
        )]
        listen: String,
        /// Write the finder as static files into DIR (a new directory, or an earlier export) instead of serving.
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
    },
    /// Show the dependency path that pulled a package into a lock.
    Why {
        /// The package name.
        package: String,
        /// The recipe whose lock to read.
        #[arg(long, short, value_name = "RECIPE", conflicts_with = "lock")]
        recipe: Option<PathBuf>,
        /// The lock file to read (default: ./kiln.lock).
        #[arg(long, value_name = "LOCK")]
        lock: Option<PathBuf>,
        /// Image architecture, when the lock has several.
        #[arg(long)]
        arch: Option<String>,
        /// Print the path as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    // An ordinary user builds as root of a user namespace of its own (the
    // subordinate ids of /etc/subuid); made while Kiln has one thread.
    // Commands that run the build sandbox: builds, shells, `[[test]]`
    // commands, and the watcher's rebuilds.
    let sandboxed = match &cli.command {
        Command::Build { .. } | Command::Shell { .. } | Command::Test { .. } => true,
        Command::Watch(a) => a.rebuild.is_some(),
        _ => false,
    };
    if sandboxed {
        kiln_rootfs::userns::enter();
    }
    let ui = ui::Ui::new(cli.quiet, cli.verbose, cli.color);
    let reporter = ui::reporter(&ui, cli.progress == ProgressFormat::Json);
    let reporter = reporter.as_ref();
    // Ctrl-C cancels this command's work: sandboxes killed, scratch removed.
    let cancel = kiln_model::Cancel::new();
    let on_interrupt = cancel.clone();
    let _ = ctrlc::set_handler(move || {
        // A shell on the terminal gets its own Ctrl-C; Kiln cleans up
        // when it ends.
        if shell::FOREGROUND.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        on_interrupt.cancel();
        // Unpacking threads may still have been writing: sweep once more.
        std::thread::sleep(std::time::Duration::from_millis(50));
        on_interrupt.cancel();
        errln!("\ninterrupted");
        std::process::exit(130);
    });
    let result = match cli.command {
        Command::Lock {
            recipe,
            check,
            update,
            json,
            sources,
        } => cmd::cmd_lock(
            reporter,
            &recipe,
            check,
            (!update.is_empty()).then_some(update.as_slice()),
            json,
            &sources.options(),
        ),
        Command::Build {
            recipe,
            output,
            locked,
            check_reproducible,
            source_date_epoch,
            sign_key,
            image_version,
            json,
            sources,
        } => match image_version.as_deref() {
            Some(v) if !kiln_recipe::valid_image_version(v) => Err(cmd::Usage::new(
                format!("--image-version `{v}` is not a version"),
                "use letters, digits and '.~^+-' (no '_'), at most 24 characters, e.g. 20261207.1",
            )
            .into()),
            _ => cmd::cmd_build(
                &ui,
                cli.catalog.as_deref(),
                reporter,
                &cancel,
                json,
                &kiln_build::BuildRequest {
                    recipe,
                    output,
                    locked,
                    check_reproducible,
                    source_date_epoch,
                    sign_key,
                    image_version,
                    sources: sources.options(),
                },
            ),
        },
        Command::Verify {
            dir,
            key,
            channels,
            lock,
            json,
            sources,
        } => {
            if catalog::is_tree(&dir) {
                publish::cmd_verify_tree(reporter, &dir, key.as_deref(), &channels, json)
            } else if !channels.is_empty() {
                Err(cmd::Usage::new(
                    format!(
                        "{} is a build, not a download tree: it has no channels",
                        dir.display()
                    ),
                    "--channel is for download trees written by kiln publish --to file://…",
                )
                .into())
            } else {
                cmd::cmd_verify(reporter, &dir, key, lock, json, &sources.options())
            }
        }
        Command::Publish(args) => {
            publish::cmd_publish(&ui, cli.catalog.as_deref(), reporter, &args)
        }
        Command::Release(args) => release::cmd_release(&ui, cli.catalog.as_deref(), &args),
        Command::Convert(args) => convert::cmd_convert(&args),
        Command::Push {
            layout,
            reference,
            tags,
            json,
            insecure,
            username,
        } => cmd::cmd_push(
            reporter, &layout, &reference, &tags, json, insecure, username,
        ),
        Command::Test {
            target: _,
            upgrade,
            expect_rollback,
            channel_fault,
            wave,
            machine_id,
            expect_held,
            cut_download,
            sign_key,
            timeout,
            memory,
            cpus,
            json,
            ..
        } if !upgrade.is_empty() => upgrade::cmd_upgrade(
            &ui,
            reporter,
            &cancel,
            &upgrade::UpgradeArgs {
                old: upgrade[0].clone(),
                new: upgrade[1].clone(),
                expect_rollback,
                fault: channel_fault,
                wave,
                machine_id,
                expect_held,
                cut_download,
                sign_key,
                timeout,
                memory,
                cpus,
                json,
            },
        ),
        Command::Test {
            target,
            timeout,
            skip_static,
            skip_boot,
            allow_user,
            memory,
            cpus,
            json,
            ..
        } => test::cmd_test(
            &ui,
            cli.catalog.as_deref(),
            reporter,
            &cancel,
            &test::TestArgs {
                target: target.expect("clap requires TARGET without --upgrade"),
                timeout,
                skip_static,
                skip_boot,
                allow_users: allow_user,
                memory,
                cpus,
                json,
            },
        ),
        Command::Boot {
            image,
            persist,
            memory,
            cpus,
            ssh_port,
            timeout,
        } => test::cmd_boot(
            &ui,
            &cancel,
            &test::BootArgs {
                image,
                persist,
                memory,
                cpus,
                ssh_port,
                timeout,
            },
        ),
        Command::Fetch {
            recipe,
            locked,
            sources,
        } => cmd::cmd_fetch(reporter, &cancel, &recipe, locked, &sources.options()),
        Command::Init {
            path,
            name,
            suite,
            distroless,
        } => cmd::cmd_init(&ui, &path, name, suite, distroless),
        Command::Ls {
            dir,
            files,
            owner,
            arch,
            json,
        } => ls::cmd_ls(
            &ui,
            &ls::LsArgs {
                dir,
                files,
                owner,
                arch,
                json,
            },
        ),
        Command::Completion { shell } => {
            let mut c = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut c, "kiln", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let c = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            let r = clap_mangen::Man::new(c.clone())
                .render(&mut out)
                .and_then(|_| {
                    // Each subcommand's page after the main one.
                    for sub in c.get_subcommands() {
                        let name: &'static str =
                            Box::leak(format!("kiln-{}", sub.get_name()).into_boxed_str());
                        let sub = sub.clone().name(name);
                        clap_mangen::Man::new(sub).render(&mut out)?;
                    }
                    Ok(())
                });
            r.map_err(anyhow::Error::from).map(|_| {
                use std::io::Write as _;
                let _ = std::io::stdout().write_all(&out);
            })
        }
        Command::Find(a) => catalog::cmd_find(&ui, cli.catalog.as_deref(), &a),
        Command::Diff { a, b, json } => diff::cmd_diff(&ui, cli.catalog.as_deref(), &a, &b, json),
        Command::Watch(a) => {
            return ExitCode::from(watch::cmd_watch(&ui, cli.catalog.as_deref(), &cancel, &a))
        }
        Command::Catalog(CatalogCommand::Import { dirs, key }) => {
            catalog::cmd_import(&ui, cli.catalog.as_deref(), &dirs, key.as_deref())
        }
        Command::Serve { listen, export } => {
            catalog::cmd_serve(&ui, cli.catalog.as_deref(), &listen, export.as_deref())
        }
        Command::Shell {
            target,
            arch,
            network,
            command,
        } => match shell::cmd_shell(
            &ui,
            &cancel,
            &shell::ShellArgs {
                target,
                arch,
                network,
                command,
            },
        ) {
            Ok(0) => Ok(()),
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Show {
            recipe,
            no_resolve,
            json,
            sources,
        } => show::cmd_show(
            &ui,
            reporter,
            &recipe,
            json,
            !no_resolve,
            &sources.options(),
        ),
        Command::Why {
            package,
            recipe,
            lock,
            arch,
            json,
        } => cmd::cmd_why(&package, recipe, lock, arch, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cancel.is_cancelled() => {
            // The interrupt handler is finishing its clean-up and exits 130.
            drop(e);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Err(e) => {
            ui::report_error(&ui, &e);
            // A malformed argument value is a usage error.
            if e.downcast_ref::<cmd::Usage>().is_some() {
                return ExitCode::from(EX_USAGE);
            }
            if matches!(
                e.downcast_ref::<kiln_catalog::CatalogError>(),
                Some(kiln_catalog::CatalogError::Query(_))
            ) {
                return ExitCode::from(EX_USAGE);
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command, with its path (`kiln push`).
    fn commands() -> Vec<(String, clap::Command)> {
        let root = Cli::command();
        let mut out = vec![("kiln".to_string(), root.clone())];
        for sub in root.get_subcommands() {
            out.push((format!("kiln {}", sub.get_name()), sub.clone()));
        }
        out
    }

    fn docs(name: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read_to_string(root.join(name)).unwrap()
    }

    #[test]
    fn every_command_and_argument_has_help_text() {
        let mut missing = Vec::new();
        for (path, cmd) in commands() {
            if cmd
                .get_about()
                .is_none_or(|a| a.to_string().trim().is_empty())
            {
                missing.push(format!("{path}: no description"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path}: argument {id} has no help"));
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn the_docs_list_every_command_flag_and_environment_variable() {
        let reference = docs("docs/commands.md");
        let mut missing = Vec::new();
        for (path, cmd) in commands().into_iter().skip(1) {
            // Its section: from its heading to the next one.
            let heading = format!("## `{path}");
            let Some(start) = reference.find(&heading) else {
                missing.push(format!("{path}: no section in docs/commands.md"));
                continue;
            };
            let rest = &reference[start + heading.len()..];
            let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
            for arg in cmd.get_arguments() {
                if arg.is_global_set() {
                    continue;
                }
                if let Some(long) = arg.get_long() {
                    if long == "help" {
                        continue;
                    }
                    // Shared source options are documented once, under lock.
                    let shared = [
                        "offline",
                        "mirror",
                        "security-mirror",
                        "cache-dir",
                        "allow-older-release",
                    ];
                    let text = if shared.contains(&long) {
                        reference.as_str()
                    } else {
                        section
                    };
                    if !text.contains(&format!("--{long}")) {
                        missing.push(format!("{path}: --{long} is not in its section"));
                    }
                }
            }
        }
        for arg in Cli::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                if long != "help" && long != "version" && !reference.contains(&format!("--{long}"))
                {
                    missing.push(format!("global --{long} is not documented"));
                }
            }
        }
        // Every KILN_* variable the code reads is documented somewhere.
        let all_docs: String = [
            "README.md",
            "docs/commands.md",
            "docs/rootfs.md",
            "docs/security.md",
            "docs/disk.md",
            "docs/recipe.md",
            "docs/updates.md",
            "docs/supply-chain.md",
        ]
        .iter()
        .map(|d| docs(d))
        .collect();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut vars = std::collections::BTreeSet::new();
        let mut stack = vec![src];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    // Sources only: tests have their own variables.
                    if p.file_name().is_some_and(|n| n != "tests" && n != "target") {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for (i, _) in text.match_indices("\"KILN_") {
                        let name: String = text[i + 1..]
                            .chars()
                            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                            .collect();
                        if name.len() > "KILN_".len() && !name.ends_with('_') {
                            vars.insert(name);
                        }
                    }
                }
            }
        }
        assert!(vars.contains("KILN_CACHE_DIR"), "the scan found {vars:?}");
        for v in vars {
            if !all_docs.contains(&v) {
                missing.push(format!("environment variable {v} is not documented"));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
