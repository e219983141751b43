//! rsproxyd-generator: a systemd.generator(7) that turns every `NAME.proxy` file into
//! NAME.socket, NAME.service (rsproxyd) and NAME-backend.service at each daemon-reload.
//! The file-system part: search paths, drop-ins, atomic writes, `[Install]` symlinks, and
//! logging; the texts come from `rsproxyd::generator`.
//!
//! ```text
//! rsproxyd-generator NORMAL_DIR [EARLY_DIR LATE_DIR]    as systemd runs it
//! rsproxyd-generator --dry-run [--user] [FILE...]       print what it would write
//! ```
//!
//! The mode (system or user manager) comes from `SYSTEMD_SCOPE`, else from the program's
//! name (`rsproxyd-user-generator` is the user one). Two environment variables are for the
//! test suite only: `RSPROXYD_GENERATOR_PATH` (colon-separated directories searched instead
//! of the real ones) and `RSPROXYD_GENERATOR_LOG=stderr` (log to stderr instead of
//! /dev/kmsg or /dev/console).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rsproxyd::generator::{self, Output, Source, Spec};

const PROGRAM: &str = "rsproxyd-generator";
/// Test-only: directories to search instead of the real ones, colon-separated.
const PATH_ENV: &str = "RSPROXYD_GENERATOR_PATH";
/// Test-only: `stderr` logs there instead of /dev/kmsg or /dev/console.
const LOG_ENV: &str = "RSPROXYD_GENERATOR_LOG";
/// syslog priorities for /dev/kmsg, with the daemon facility (3 << 3), as systemd's own
/// generators log: the kernel would otherwise file them under "user".
const LOG_ERR: u8 = (3 << 3) | 3;
const LOG_INFO: u8 = (3 << 3) | 6;

const USAGE: &str = "usage: rsproxyd-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n       \
rsproxyd-generator --dry-run [--user] [FILE.proxy...]\n\n\
Turns /etc/rsproxyd/NAME.proxy (also /run/rsproxyd, /usr/lib/rsproxyd; for a user manager\n\
~/.config/rsproxyd, $XDG_RUNTIME_DIR/rsproxyd, /etc/rsproxyd/user) into NAME.socket,\n\
NAME.service and NAME-backend.service. systemd runs it at every daemon-reload;\n\
--dry-run prints the units (path, then contents) and the errors, exit 1 on any error.\n";

/// Where messages go.
enum Log {
    Stderr,
    /// /dev/kmsg: `<PRI>rsproxyd-generator[PID]: message`.
    Kmsg(File),
    /// /dev/console, where there is no /dev/kmsg (containers).
    Console(File),
}

impl Log {
    /// As a generator: kmsg, else the console, else stderr.
    fn for_generator() -> Log {
        if std::env::var(LOG_ENV).as_deref() == Ok("stderr") {
            return Log::Stderr;
        }
        let open = |p: &str| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(p)
        };
        if let Ok(f) = open("/dev/kmsg") {
            return Log::Kmsg(f);
        }
        if let Ok(f) = open("/dev/console") {
            return Log::Console(f);
        }
        Log::Stderr
    }

    fn write(&mut self, priority: u8, msg: &str) {
        // A message that cannot be logged is not a reason to stop generating units.
        let _ = match self {
            Log::Stderr => writeln!(io::stderr(), "{PROGRAM}: {msg}"),
            Log::Kmsg(f) => {
                f.write_all(format!("<{priority}>{PROGRAM}[{}]: {msg}\n", pid()).as_bytes())
            }
            Log::Console(f) => f.write_all(format!("{PROGRAM}: {msg}\n").as_bytes()),
        };
    }

    fn error(&mut self, msg: &str) {
        self.write(LOG_ERR, msg);
    }

    fn info(&mut self, msg: &str) {
        self.write(LOG_INFO, msg);
    }
}

/// Which manager the units are for.
fn user_mode(argv0: &OsString) -> bool {
    match std::env::var("SYSTEMD_SCOPE").as_deref() {
        Ok("user") => true,
        Ok("system") => false,
        _ => Path::new(argv0)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("user-generator")),
    }
}

/// The directories searched, most important first.
fn search_path(user: bool, log: &mut Log) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(PATH_ENV) {
        return std::env::split_paths(&p).collect();
    }
    if !user {
        return ["/run/rsproxyd", "/etc/rsproxyd", "/usr/lib/rsproxyd"]
            .map(PathBuf::from)
            .to_vec();
    }
    let mut v = Vec::new();
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    match env_dir("XDG_CONFIG_HOME").or_else(|| env_dir("HOME").map(|h| h.join(".config"))) {
        Some(c) => v.push(c.join("rsproxyd")),
        None => {
            log.error("neither XDG_CONFIG_HOME nor HOME is set: not reading ~/.config/rsproxyd")
        }
    }
    if let Some(r) = env_dir("XDG_RUNTIME_DIR") {
        v.push(r.join("rsproxyd"));
    }
    v.push(PathBuf::from("/etc/rsproxyd/user"));
    v
}

/// One NAME to generate: its `.proxy` file (or a mask) and its drop-ins by file name.
#[derive(Default)]
struct Found {
    main: Option<PathBuf>,
    masked: bool,
    dropins: BTreeMap<OsString, PathBuf>,
}

/// Walks the search path: the first `NAME.proxy` of a name wins (later ones are logged as
/// shadowed); drop-ins `NAME.proxy.d/*.conf` from every directory, the first of a file
/// name winning, applied in file-name order.
fn walk(roots: &[PathBuf], log: &mut Log) -> BTreeMap<String, Found> {
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for root in roots {
        let entries = match fs::read_dir(root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                log.error(&format!("cannot read {}: {e}", root.display()));
                continue;
            }
        };
        // (name, path, is a symbolic link), from the directory entry: no stat per file.
        let mut names: Vec<(String, PathBuf, bool)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let link = e.file_type().is_ok_and(|t| t.is_symlink());
                Some((e.file_name().into_string().ok()?, e.path(), link))
            })
            .collect();
        names.sort();
        for (file_name, path, link) in names {
            if let Some(stem) = file_name.strip_suffix(".d") {
                if let Some(name) = stem.strip_suffix(generator::SUFFIX) {
                    add_dropins(found.entry(name.to_string()).or_default(), &path, log);
                }
                continue;
            }
            let Some(name) = file_name.strip_suffix(generator::SUFFIX) else {
                continue;
            };
            let f = found.entry(name.to_string()).or_default();
            match &f.main {
                Some(winner) => log.info(&format!(
                    "{} is shadowed by {}, which is used",
                    path.display(),
                    winner.display()
                )),
                None => {
                    f.masked =
                        link && fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null"));
                    f.main = Some(path);
                }
            }
        }
    }
    found
}

fn add_dropins(f: &mut Found, dir: &Path, log: &mut Log) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            log.error(&format!("cannot read {}: {e}", dir.display()));
            return;
        }
    };
    for e in entries.filter_map(|e| e.ok()) {
        let n = e.file_name();
        if n.to_string_lossy().ends_with(".conf") {
            f.dropins.entry(n).or_insert_with(|| e.path());
        }
    }
}

fn read(path: &Path) -> Result<Source, String> {
    fs::read_to_string(path)
        .map(|text| Source {
            path: path.display().to_string(),
            text,
        })
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Reads and parses one NAME; errors are logged and make it `None`.
fn load(name: &str, main: &Path, dropins: &[PathBuf], log: &mut Log) -> Option<Spec> {
    if let Err(e) = generator::name_of(&format!("{name}{}", generator::SUFFIX)) {
        log.error(&format!("{}: skipped: {e}", main.display()));
        return None;
    }
    let sources: Result<Vec<Source>, String> = std::iter::once(main)
        .chain(dropins.iter().map(PathBuf::as_path))
        .map(read)
        .collect();
    let sources = match sources {
        Ok(s) => s,
        Err(e) => {
            log.error(&e);
            return None;
        }
    };
    match generator::parse(name, &sources[0], &sources[1..]) {
        Ok(spec) => Some(spec),
        Err(errors) => {
            for e in errors {
                log.error(&format!("{e} (file skipped)"));
            }
            None
        }
    }
}

/// Parses every NAME, then drops those whose unit names collide. Returns the specs to
/// write and whether any file failed.
fn load_all(names: Vec<(String, PathBuf, Vec<PathBuf>)>, log: &mut Log) -> (Vec<Spec>, bool) {
    let mut failed = false;
    let mut specs = Vec::new();
    for (name, main, dropins) in names {
        match load(&name, &main, &dropins, log) {
            Some(s) => specs.push(s),
            None => failed = true,
        }
    }
    let collisions = generator::check_collisions(&specs);
    specs.retain(|s| match collisions.get(&s.name) {
        Some(e) => {
            log.error(&format!("{e} (file skipped)"));
            failed = true;
            false
        }
        None => true,
    });
    (specs, failed)
}

/// Writes `contents` to `dir/name` through a temporary file and a rename.
fn write_atomic(dir: &Path, name: &str, contents: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".#{name}.{}", pid()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        // No fsync: the output directory is a tmpfs under /run, written again at every
        // boot and reload; the rename alone keeps readers from seeing half a file.
        f.write_all(contents.as_bytes())?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir/link` pointing at `target`, replacing what was there, through a rename.
fn symlink_atomic(dir: &Path, link: &str, target: &str) -> io::Result<()> {
    let path = dir.join(link);
    let parent = path.parent().unwrap_or(dir);
    fs::create_dir_all(parent)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = parent.join(format!(".#{}.{}", name.unwrap_or_default(), pid()));
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// This process's id, asked of the kernel once (it names temporary files and kmsg lines).
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

fn write_output(dir: &Path, out: &Output) -> io::Result<()> {
    for (name, contents) in &out.files {
        write_atomic(dir, name, contents)?;
    }
    for (link, target) in &out.links {
        symlink_atomic(dir, link, target)?;
    }
    Ok(())
}

/// As systemd runs it: every file of the search path into `out_dir`.
fn generate(out_dir: &Path, user: bool) -> ExitCode {
    let mut log = Log::for_generator();
    let roots = search_path(user, &mut log);
    let names = walk(&roots, &mut log)
        .into_iter()
        .filter_map(|(name, f)| {
            if f.masked {
                return None;
            }
            // Drop-ins without a .proxy file are ignored, as systemd ignores drop-ins of a
            // unit that does not exist.
            Some((name, f.main?, f.dropins.into_values().collect()))
        })
        .collect();
    let (specs, mut failed) = load_all(names, &mut log);
    for spec in &specs {
        let out = generator::render(spec, user);
        if let Err(e) = write_output(out_dir, &out) {
            log.error(&format!(
                "{}: cannot write its units to {}: {e}",
                spec.source,
                out_dir.display()
            ));
            failed = true;
        }
    }
    exit(failed)
}

/// `--dry-run`: the given files (or the search path) to stdout, errors to stderr.
fn dry_run(files: &[OsString], user: bool) -> ExitCode {
    let mut log = Log::Stderr;
    let mut bad_name = false;
    let names: Vec<(String, PathBuf, Vec<PathBuf>)> = if files.is_empty() {
        let roots = search_path(user, &mut log);
        walk(&roots, &mut log)
            .into_iter()
            .filter_map(|(name, f)| {
                (!f.masked).then_some(())?;
                Some((name, f.main?, f.dropins.into_values().collect()))
            })
            .collect()
    } else {
        let mut v = Vec::new();
        for f in files {
            // SourcePath= must be absolute.
            let path = std::path::absolute(f).unwrap_or_else(|_| PathBuf::from(f));
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = match generator::name_of(&file_name) {
                Ok(n) => n.to_string(),
                Err(e) => {
                    log.error(&format!("{}: skipped: {e}", path.display()));
                    bad_name = true;
                    continue;
                }
            };
            let mut d = Found::default();
            let mut dir = path.clone().into_os_string();
            dir.push(".d");
            if Path::new(&dir).is_dir() {
                add_dropins(&mut d, Path::new(&dir), &mut log);
            }
            v.push((name, path, d.dropins.into_values().collect()));
        }
        v
    };
    dry_run_rest(names, user, log, bad_name)
}

fn dry_run_rest(
    names: Vec<(String, PathBuf, Vec<PathBuf>)>,
    user: bool,
    mut log: Log,
    already_failed: bool,
) -> ExitCode {
    let (specs, failed) = load_all(names, &mut log);
    let dir = if user {
        let runtime = std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| {
            // SAFETY: getuid() has no preconditions and cannot fail.
            format!("/run/user/{}", unsafe { libc::getuid() })
        });
        format!("{runtime}/systemd/generator")
    } else {
        "/run/systemd/generator".to_string()
    };
    let mut stdout = io::stdout().lock();
    for spec in &specs {
        let out = generator::render(spec, user);
        for (name, contents) in &out.files {
            let _ = writeln!(stdout, "{dir}/{name}\n{contents}");
        }
        for (link, target) in &out.links {
            let _ = writeln!(stdout, "{dir}/{link} -> {target}\n");
        }
    }
    exit(failed || already_failed)
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let mut dry = false;
    let mut user_flag = false;
    let mut rest = Vec::new();
    for a in args {
        match a.to_str() {
            Some("--dry-run") => dry = true,
            Some("--user") => user_flag = true,
            Some("--help" | "-h") => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some("--version") => {
                println!("{PROGRAM} {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Some(s) if s.starts_with('-') && s.len() > 1 => {
                eprint!("{PROGRAM}: unknown option {s}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => rest.push(a),
        }
    }
    let user = user_flag || user_mode(&argv0);
    if dry {
        return dry_run(&rest, user);
    }
    if user_flag {
        eprint!("{PROGRAM}: --user goes with --dry-run (as a generator, the mode comes from SYSTEMD_SCOPE)\n{USAGE}");
        return ExitCode::from(2);
    }
    match rest.as_slice() {
        [out, ..] if rest.len() <= 3 => generate(Path::new(out), user),
        _ => {
            eprint!("{PROGRAM}: expected one to three output directories\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
