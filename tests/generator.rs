//! rsproxyd-generator, the real binary: `.proxy` files in a temporary tree, the units and
//! symlinks it writes compared with tests/generator_golden, every error with its file:line,
//! precedence, drop-ins, masks, collisions and the user mode.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rsproxyd-generator")
}

/// A temporary tree: `run/`, `etc/`, `usr/` (the three search directories, most important
/// first) and `out/` (the generator's output directory). Removed when dropped.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "rsproxyd-gen-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        for d in ["run", "etc", "usr", "out"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        Tree { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, text).expect("write");
        p
    }

    /// Runs the generator as systemd would (output directory `out`, search path
    /// run:etc:usr), logging to stderr.
    fn generate(&self, env: &[(&str, &str)]) -> Output {
        let search = format!(
            "{}:{}:{}",
            self.path("run").display(),
            self.path("etc").display(),
            self.path("usr").display()
        );
        let mut cmd = Command::new(bin());
        let out = self.path("out");
        cmd.args([&out, &out, &out])
            .env("RSPROXYD_GENERATOR_PATH", search)
            .env("RSPROXYD_GENERATOR_LOG", "stderr")
            .env_remove("SYSTEMD_SCOPE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run rsproxyd-generator")
    }

    /// Every path under `out`, symlinks as `path -> target`.
    fn listing(&self) -> BTreeSet<String> {
        let mut set = BTreeSet::new();
        list(&self.path("out"), &self.path("out"), &mut set);
        set
    }

    fn out(&self, name: &str) -> String {
        fs::read_to_string(self.path("out").join(name)).expect("generated unit")
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn list(base: &Path, dir: &Path, set: &mut BTreeSet<String>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let rel = p
            .strip_prefix(base)
            .expect("under base")
            .display()
            .to_string();
        match fs::read_link(&p) {
            Ok(t) => {
                set.insert(format!("{rel} -> {}", t.display()));
            }
            Err(_) if p.is_dir() => list(base, &p, set),
            Err(_) => {
                set.insert(rel);
            }
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The golden file `tests/generator_golden/NAME`, with `@SOURCE@` standing for the path of
/// the `.proxy` file.
fn golden(name: &str, source: &Path) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/generator_golden")
        .join(name);
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .replace("@SOURCE@", &source.display().to_string())
}

/// The example file.
const MYAPP: &str = "\
# /etc/rsproxyd/myapp.proxy
[Unit]
Description=myapp on demand

[Socket]
ListenStream=127.0.0.1:9000

[Proxy]
Target=127.0.0.1:9001
ExitIdleTime=10min

[Backend]
ExecStart=/usr/local/bin/myapp --listen 127.0.0.1:9001

[Install]
WantedBy=sockets.target
";

/// The smallest valid file, with no Description and no [Install].
const MINIMAL: &str = "\
[Socket]
ListenStream=8000
[Proxy]
Target=127.0.0.1:8001
[Backend]
ExecStart=/bin/true
";

/// The example becomes exactly the three golden units and one sockets.target.wants
/// symlink, and nothing else in the output directory; exit 0.
#[test]
fn golden_system_units() {
    let t = Tree::new();
    let src = t.write("etc/myapp.proxy", MYAPP);
    let o = t.generate(&[]);
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(&o));
    assert_eq!(stderr(&o), "");
    let want: BTreeSet<String> = [
        "myapp.socket",
        "myapp.service",
        "myapp-backend.service",
        "sockets.target.wants/myapp.socket -> ../myapp.socket",
    ]
    .map(String::from)
    .into();
    assert_eq!(t.listing(), want);
    for unit in ["myapp.socket", "myapp.service", "myapp-backend.service"] {
        assert_eq!(t.out(unit), golden(unit, &src), "{unit}");
    }
}

/// For a user manager (SYSTEMD_SCOPE=user) the proxy has no DynamicUser= and none of the
/// options an unprivileged manager cannot apply; socket and backend are the same.
#[test]
fn golden_user_units() {
    let t = Tree::new();
    let src = t.write("etc/myapp.proxy", MYAPP);
    let o = t.generate(&[("SYSTEMD_SCOPE", "user")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(t.out("myapp.service"), golden("myapp.service.user", &src));
    assert_eq!(t.out("myapp.socket"), golden("myapp.socket", &src));
    assert_eq!(
        t.out("myapp-backend.service"),
        golden("myapp-backend.service", &src)
    );
    assert!(!t.out("myapp.service").contains("DynamicUser"));
}

/// Without SYSTEMD_SCOPE, a program named rsproxyd-user-generator generates user units,
/// and SYSTEMD_SCOPE=system wins over that name.
#[test]
fn user_mode_from_program_name() {
    let t = Tree::new();
    t.write("etc/myapp.proxy", MYAPP);
    let link = t.path("rsproxyd-user-generator");
    symlink(bin(), &link).expect("symlink");
    let search = format!("{}", t.path("etc").display());
    let run = |scope: Option<&str>| {
        let mut c = Command::new(&link);
        c.arg(t.path("out"))
            .env("RSPROXYD_GENERATOR_PATH", &search)
            .env("RSPROXYD_GENERATOR_LOG", "stderr")
            .env_remove("SYSTEMD_SCOPE");
        if let Some(s) = scope {
            c.env("SYSTEMD_SCOPE", s);
        }
        let o = c.output().expect("run");
        assert!(o.status.success(), "{}", stderr(&o));
        t.out("myapp.service")
    };
    assert!(!run(None).contains("DynamicUser=yes"));
    assert!(run(Some("system")).contains("DynamicUser=yes"));
}

/// Options in [Proxy] become rsproxyd flags; DrainTimeout= moves TimeoutStopSec= with it;
/// Unit= makes the proxy want that unit and generates no backend; a remote TARGET address is
/// allowed through the IP filter.
#[test]
fn options_and_existing_backend() {
    let t = Tree::new();
    t.write(
        "etc/web.proxy",
        "[Socket]\nListenStream=[::]:80\nListenStream=/run/web.sock\n\
         [Proxy]\nTarget=192.0.2.7:8080\nConnectTimeout=1min\nDrainTimeout=1h 30min\n\
         ConnectionsMax=0x40\nThreads=2\nExitIdleTime=infinity\nProxyProtocol=v2\n\
         ConnectionIdleTimeout=infinity\nQueueTimeout=0\nSessionTimeout=30s\n\
         [Backend]\nUnit=nginx.service\n[Install]\nWantedBy=sockets.target multi-user.target\n\
         RequiredBy=web-stack.target\n",
    );
    let o = t.generate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: BTreeSet<String> = [
        "web.socket",
        "web.service",
        "sockets.target.wants/web.socket -> ../web.socket",
        "multi-user.target.wants/web.socket -> ../web.socket",
        "web-stack.target.requires/web.socket -> ../web.socket",
    ]
    .map(String::from)
    .into();
    assert_eq!(t.listing(), want);
    let svc = t.out("web.service");
    for line in [
        "ExecStart=/usr/bin/rsproxyd --follow-backend --exit-idle-time=infinity --connect-timeout=1min \"--drain-timeout=1h 30min\" --connections-max=0x40 --threads=2 --proxy-protocol=v2 --connection-idle-timeout=infinity --half-close-timeout=1min --queue-timeout=0 --session-timeout=30s 192.0.2.7:8080",
        "Wants=nginx.service",
        "After=nginx.service",
        "TimeoutStopSec=5415s",
        "IPAddressAllow=localhost 192.0.2.7",
    ] {
        assert!(svc.lines().any(|l| l == line), "no line {line:?} in\n{svc}");
    }
    let sock = t.out("web.socket");
    assert!(sock.contains("ListenStream=[::]:80\nListenStream=/run/web.sock\n"));
}

/// StopWithProxy=no keeps the backend running after the proxy exits (no
/// StopWhenUnneeded=); [Backend] keys are copied after the defaults, so they override them.
#[test]
fn stop_with_proxy_no_and_backend_keys() {
    let t = Tree::new();
    t.write(
        "etc/db.proxy",
        "[Socket]\nListenStream=5432\n[Proxy]\nTarget=/run/db/db.sock\n\
         [Backend]\nExecStart=/usr/bin/db\nStopWithProxy=no\nType=notify\nUser=db\n",
    );
    let o = t.generate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b = t.out("db-backend.service");
    assert!(!b.contains("StopWhenUnneeded"), "{b}");
    assert!(b.ends_with("Type=exec\nRestart=no\nExecStart=/usr/bin/db\nType=notify\nUser=db\n"));
    // No [Install]: no symlink.
    assert!(t.listing().iter().all(|p| !p.contains("->")));
}

/// Each broken file is skipped with one message per problem naming file:line, exit 1,
/// while a good file next to it is still generated.
#[test]
fn every_error_names_file_and_line() {
    // (file text, line, what the message must say)
    let cases: &[(&str, usize, &str)] = &[
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n[Servce]\nX=1\n",
            7,
            "unknown section [Servce]",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nTargett=x\n[Backend]\nExecStart=/bin/true\n",
            5,
            "unknown key Targett= in [Proxy]",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\nAfter=x.service\n",
            7,
            "unknown key After= in [Backend]",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nExitIdleTime=1s\n[Backend]\nExecStart=/bin/true\n",
            3,
            "no Target= in [Proxy]",
        ),
        (
            "[Socket]\nListenStream=1\n[Backend]\nExecStart=/bin/true\n",
            1,
            "there is no [Proxy] section",
        ),
        (
            "[Socket]\nBacklog=5\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n",
            1,
            "no ListenStream= (or other Listen*=) line in [Socket]",
        ),
        (
            "[Socket]\nListenStream=1\nListenStream=\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n",
            1,
            "no ListenStream=",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\nUnit=x.service\n",
            7,
            "both Unit=x.service and ExecStart=",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nType=exec\n",
            5,
            "no ExecStart= or Unit= in [Backend]",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1\n[Backend]\nExecStart=/bin/true\n",
            4,
            "Target=127.0.0.1: target '127.0.0.1' has no port",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=fe80::1:80\n[Backend]\nExecStart=/bin/true\n",
            4,
            "without brackets",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nExitIdleTime=5 parsecs\n[Backend]\nExecStart=/bin/true\n",
            5,
            "ExitIdleTime=5 parsecs:",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nConnectTimeout=-1s\n[Backend]\nExecStart=/bin/true\n",
            5,
            "ConnectTimeout=-1s:",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nDrainTimeout=10x\n[Backend]\nExecStart=/bin/true\n",
            5,
            "DrainTimeout=10x:",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nConnectionsMax=0\n[Backend]\nExecStart=/bin/true\n",
            5,
            "ConnectionsMax=0: expected a whole number, 1 or more",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nThreads=0\n[Backend]\nExecStart=/bin/true\n",
            5,
            "Threads=0: expected a whole number from 1 to",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nProxyProtocol=v3\n[Backend]\nExecStart=/bin/true\n",
            5,
            "ProxyProtocol=v3: expected v1 or v2",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\nHalfCloseTimeout=soon\n[Backend]\nExecStart=/bin/true\n",
            5,
            "HalfCloseTimeout=soon:",
        ),
        (
            "ListenStream=1\n[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n",
            1,
            "ListenStream= is outside of any section",
        ),
        (
            "[Socket]\nListenStream 1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n",
            2,
            "neither a [Section] header nor a Key=value line",
        ),
        (
            "[Socket]   # the address\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n",
            1,
            "invalid section header",
        ),
        (
            "[Socket]\nListenStream=1\nAccept=yes\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n",
            3,
            "Accept=yes is not supported",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nUnit=not a unit\n",
            6,
            "Unit=not a unit: not a valid unit name",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nUnit=bad.service\n",
            6,
            "that unit is generated from this file",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nUnit=x.service\nUser=x\n",
            7,
            "User= with Unit=x.service",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\nStopWithProxy=maybe\n",
            7,
            "StopWithProxy=maybe: expected yes or no",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n[Install]\nAlias=y.socket\n",
            8,
            "Alias= in [Install] is not supported",
        ),
        (
            "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n[Install]\nWantedBy=sockets\n",
            8,
            "'sockets' is not a valid unit name",
        ),
        (
            "[Unit]\nSourcePath=/x\n[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\nExecStart=/bin/true\n",
            2,
            "SourcePath= is set by the generator",
        ),
    ];
    for (text, line, what) in cases {
        let t = Tree::new();
        let bad = t.write("etc/bad.proxy", text);
        t.write("etc/good.proxy", MINIMAL);
        let o = t.generate(&[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{text:?}: {err}");
        let want = format!("rsproxyd-generator: {}:{line}: ", bad.display());
        assert!(
            err.lines()
                .any(|l| l.starts_with(&want) && l.contains(what)),
            "{text:?}: want {want}...{what}, got:\n{err}"
        );
        let listing = t.listing();
        assert!(
            listing.iter().all(|p| !p.contains("bad")),
            "{text:?}: {listing:?}"
        );
        assert!(listing.contains("good.service"), "{text:?}: {listing:?}");
    }
}

/// File names that cannot be unit names are refused, naming the file.
#[test]
fn bad_names_are_refused() {
    for name in ["my app.proxy", "a@b.proxy", ".proxy", "ünï.proxy"] {
        let t = Tree::new();
        let bad = t.write(&format!("etc/{name}"), MINIMAL);
        let o = t.generate(&[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("{}: skipped: ", bad.display())),
            "{name}: {err}"
        );
        assert!(t.listing().is_empty(), "{name}: {:?}", t.listing());
    }
}

/// a-backend.proxy would generate a-backend.service, which is also a.proxy's backend: both
/// files are skipped with a message naming the other, c.proxy is still generated.
#[test]
fn colliding_names_are_refused() {
    let t = Tree::new();
    let a = t.write("etc/a.proxy", MINIMAL);
    let ab = t.write("usr/a-backend.proxy", MINIMAL);
    t.write("etc/c.proxy", MINIMAL);
    let o = t.generate(&[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!(
        "{}: a-backend.service would also be generated from {}",
        a.display(),
        ab.display()
    )));
    assert!(err.contains(&format!(
        "{}: a-backend.service would also be generated from {}",
        ab.display(),
        a.display()
    )));
    let files: BTreeSet<String> = t.listing();
    assert_eq!(
        files,
        ["c.socket", "c.service", "c-backend.service"]
            .map(String::from)
            .into()
    );
    // With Unit=, a.proxy generates no a-backend.service: no collision.
    t.write(
        "etc/a.proxy",
        &MINIMAL.replace("ExecStart=/bin/true", "Unit=x.service"),
    );
    let o = t.generate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The first directory of the search path wins (/run over /etc over /usr/lib); each
/// shadowed file is logged; exit 0.
#[test]
fn precedence_run_etc_usr() {
    let t = Tree::new();
    let run = t.write("run/p.proxy", &MINIMAL.replace("8001", "1111"));
    let etc = t.write("etc/p.proxy", &MINIMAL.replace("8001", "2222"));
    let usr = t.write("usr/p.proxy", &MINIMAL.replace("8001", "3333"));
    t.write("usr/q.proxy", &MINIMAL.replace("8001", "4444"));
    t.write("etc/q.proxy", &MINIMAL.replace("8001", "5555"));
    let o = t.generate(&[]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(t.out("p.service").contains(" 127.0.0.1:1111\n"));
    assert!(t
        .out("p.service")
        .contains(&format!("SourcePath={}\n", run.display())));
    assert!(t.out("q.service").contains(" 127.0.0.1:5555\n"));
    for (loser, winner) in [(&etc, &run), (&usr, &run)] {
        let want = format!(
            "{} is shadowed by {}, which is used",
            loser.display(),
            winner.display()
        );
        assert!(err.contains(&want), "want {want} in:\n{err}");
    }
}

/// A symlink to /dev/null masks a file of the same name further down the search path:
/// nothing is generated, and that is not an error.
#[test]
fn dev_null_masks() {
    let t = Tree::new();
    t.write("usr/m.proxy", MINIMAL);
    symlink("/dev/null", t.path("etc/m.proxy")).expect("symlink");
    let o = t.generate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(t.listing().is_empty(), "{:?}", t.listing());
}

/// Drop-ins NAME.proxy.d/*.conf from every directory are applied in file-name order after
/// the file; one of the same name in a more important directory replaces the other; an
/// error in a drop-in names the drop-in and its line.
#[test]
fn dropins_merge_in_name_order() {
    let t = Tree::new();
    t.write("usr/d.proxy", MINIMAL);
    t.write(
        "usr/d.proxy.d/20-b.conf",
        "[Proxy]\nTarget=127.0.0.1:2020\n[Socket]\nListenStream=\nListenStream=2000\n",
    );
    t.write(
        "etc/d.proxy.d/10-a.conf",
        "[Proxy]\nTarget=127.0.0.1:1010\nExitIdleTime=2s\n",
    );
    // Replaces usr's 30-c.conf, which would be an error.
    t.write("usr/d.proxy.d/30-c.conf", "[Bogus]\n");
    t.write(
        "run/d.proxy.d/30-c.conf",
        "[Backend]\nExecStart=\nExecStart=/bin/false\n",
    );
    t.write("etc/d.proxy.d/ignored.txt", "[Bogus]\n");
    let o = t.generate(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svc = t.out("d.service");
    assert!(
        svc.contains(
            "--exit-idle-time=2s --connection-idle-timeout=10min --half-close-timeout=1min 127.0.0.1:2020\n"
        ),
        "{svc}"
    );
    let sock = t.out("d.socket");
    assert!(sock.ends_with("[Socket]\nListenStream=8000\nListenStream=\nListenStream=2000\n"));
    assert!(t
        .out("d-backend.service")
        .ends_with("ExecStart=/bin/true\nExecStart=\nExecStart=/bin/false\n"));

    let bad = t.write("etc/d.proxy.d/40-d.conf", "[Proxy]\n\nThreads=many\n");
    let o = t.generate(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("{}:3: Threads=many", bad.display())),
        "{}",
        stderr(&o)
    );
}

/// Nothing to do (no directory exists, or none has a .proxy file): exit 0, nothing written.
#[test]
fn nothing_to_do() {
    let t = Tree::new();
    let o = Command::new(bin())
        .arg(t.path("out"))
        .env("RSPROXYD_GENERATOR_PATH", t.path("nowhere"))
        .env("RSPROXYD_GENERATOR_LOG", "stderr")
        .output()
        .expect("run");
    assert!(o.status.success());
    assert_eq!(stderr(&o), "");
    t.write("etc/readme.txt", "not a proxy file");
    let o = t.generate(&[]);
    assert!(o.status.success());
    assert!(t.listing().is_empty());
}

/// A second run replaces the units in place (atomically, no temporary files left).
#[test]
fn rerun_replaces_units() {
    let t = Tree::new();
    t.write("etc/myapp.proxy", MYAPP);
    assert!(t.generate(&[]).status.success());
    t.write("etc/myapp.proxy", &MYAPP.replace("9001", "9002"));
    assert!(t.generate(&[]).status.success());
    assert!(t.out("myapp.service").contains("127.0.0.1:9002\n"));
    assert_eq!(t.listing().len(), 4, "{:?}", t.listing());
}

/// --dry-run FILE prints each unit's path then its contents, and the symlinks, to stdout;
/// errors to stderr; exit 1 when any file has an error; it writes nothing.
#[test]
fn dry_run_prints_units_and_errors() {
    let t = Tree::new();
    let good = t.write("etc/myapp.proxy", MYAPP);
    let bad = t.write("etc/bad.proxy", "[Proxy]\nTarget=x\n");
    let o = Command::new(bin())
        .arg("--dry-run")
        .arg(&good)
        .arg(&bad)
        .env_remove("SYSTEMD_SCOPE")
        .output()
        .expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1));
    let want = format!(
        "/run/systemd/generator/myapp.socket\n{}\n",
        golden("myapp.socket", &good)
    );
    assert!(out.starts_with(&want), "{out}");
    assert!(out
        .contains("/run/systemd/generator/sockets.target.wants/myapp.socket -> ../myapp.socket\n"));
    assert!(stderr(&o).contains(&format!("{}:2: Target=x:", bad.display())));
    assert!(t.listing().is_empty());

    let o = Command::new(bin())
        .args(["--dry-run", "--user"])
        .arg(&good)
        .env("XDG_RUNTIME_DIR", "/run/user/1234")
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("/run/user/1234/systemd/generator/myapp.socket\n"));
    assert!(!out.contains("DynamicUser"));
}

/// Usage errors exit 2 with a message: no output directory, an unknown option.
#[test]
fn usage_errors() {
    for args in [&[][..], &["--frobnicate", "/tmp"][..]] {
        let o = Command::new(bin()).args(args).output().expect("run");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("usage: rsproxyd-generator"), "{args:?}");
    }
}

/// The user manager's real search path (no test override): $XDG_CONFIG_HOME/rsproxyd (or
/// ~/.config/rsproxyd) before $XDG_RUNTIME_DIR/rsproxyd, the first file of a name winning.
#[test]
fn user_search_path_defaults() {
    let t = Tree::new();
    let home_file = t.write(
        "home/.config/rsproxyd/u.proxy",
        &MINIMAL.replace("8001", "1111"),
    );
    let xdg_file = t.write("xdg/rsproxyd/u.proxy", &MINIMAL.replace("8001", "2222"));
    let runtime_file = t.write("runtime/rsproxyd/u.proxy", &MINIMAL.replace("8001", "3333"));
    t.write("runtime/rsproxyd/r.proxy", MINIMAL);
    let run = |xdg: bool| {
        let mut c = Command::new(bin());
        c.args(["--dry-run", "--user"])
            .env_remove("RSPROXYD_GENERATOR_PATH")
            .env("HOME", t.path("home"))
            .env("XDG_RUNTIME_DIR", t.path("runtime"));
        if xdg {
            c.env("XDG_CONFIG_HOME", t.path("xdg"));
        } else {
            c.env_remove("XDG_CONFIG_HOME");
        }
        c.output().expect("run")
    };
    let o = run(false);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains(&format!("SourcePath={}\n", home_file.display())),
        "{out}"
    );
    assert!(out.contains(" 127.0.0.1:1111\n"));
    assert!(
        out.contains("/r.service\n"),
        "the runtime directory is read too"
    );
    assert!(stderr(&o).contains(&format!(
        "{} is shadowed by {}",
        runtime_file.display(),
        home_file.display()
    )));
    let o = run(true);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("SourcePath={}\n", xdg_file.display())),
        "{out}"
    );
}
