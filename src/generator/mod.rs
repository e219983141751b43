//! rsproxyd-generator's logic: one `NAME.proxy` file (and its drop-ins) in, the socket, proxy
//! and backend units out. No file-system I/O here: `src/bin/rsproxyd-generator.rs` reads the
//! files, writes the units and logs; this module only turns texts into texts.
//!
//! [`parse`] reads one file into a [`Spec`], refusing what rsproxyd would refuse (through
//! [`crate::target`], [`crate::timespan`] and [`crate::number`]); [`check_collisions`] finds
//! names two files would both generate; [`render`] writes the units.

mod keys;
mod render;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::limits::{
    GENERATED_CONNECTION_IDLE_TIMEOUT, GENERATED_EXIT_IDLE_TIME, GENERATED_HALF_CLOSE_TIMEOUT,
    MAX_THREADS,
};
use crate::number::parse_c_unsigned;
use crate::target::Target;

pub use keys::SERVICE_KEYS;
pub use render::{render, Output};

/// The suffix of the files the generator reads.
pub const SUFFIX: &str = ".proxy";
/// What NAME's generated backend unit is called: `NAME-backend.service`.
pub const BACKEND_SUFFIX: &str = "-backend";
/// The longest unit name systemd accepts (UNIT_NAME_MAX).
const UNIT_NAME_MAX: usize = 255;
/// The unit types systemd knows, for checking unit names in `Unit=` and `[Install]`.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// One text to read: a `.proxy` file or one of its drop-ins, with the path named in messages.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: String,
    pub text: String,
}

/// Something wrong in a file, at a line (1-based; 0 when it is about the file as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// A `Key=value` line as written, copied into a generated unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

/// The backend: a unit generated from `ExecStart=` and the other `[Backend]` keys, or an
/// existing unit named by `Unit=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Generated {
        /// `[Service]` lines in file order, `ExecStart=` included.
        service: Vec<Entry>,
        /// `StopWithProxy=` (default yes): `StopWhenUnneeded=yes` on the backend, so it
        /// stops when the proxy exits idle.
        stop_with_proxy: bool,
    },
    Existing(String),
}

/// rsproxyd's options from `[Proxy]`, as written (each already checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// `Target=` as written.
    pub target_text: String,
    pub target: Target,
    /// `ExitIdleTime=`, or the generator's default.
    pub exit_idle_time: String,
    /// The other options given, as rsproxyd flags (`--connect-timeout=5s`), in
    /// [`PROXY_KEYS`] order.
    pub flags: Vec<String>,
    /// `DrainTimeout=` read (`None`: infinity), for `TimeoutStopSec=`.
    pub drain: Option<Duration>,
}

/// Everything one `NAME.proxy` file (with its drop-ins) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    /// The `.proxy` file, for `SourcePath=` and the header.
    pub source: String,
    pub unit: Vec<Entry>,
    pub socket: Vec<Entry>,
    pub proxy: Proxy,
    pub backend: Backend,
    /// `(WantedBy | RequiredBy | UpheldBy, unit)`, applied to NAME.socket.
    pub install: Vec<(InstallKind, String)>,
}

/// How `[Install]` links the socket into another unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum InstallKind {
    WantedBy,
    RequiredBy,
    UpheldBy,
}

impl InstallKind {
    /// The directory suffix systemctl enable would use.
    pub fn dir_suffix(self) -> &'static str {
        match self {
            InstallKind::WantedBy => ".wants",
            InstallKind::RequiredBy => ".requires",
            InstallKind::UpheldBy => ".upholds",
        }
    }
}

impl Spec {
    /// The socket unit's name.
    pub fn socket_unit(&self) -> String {
        format!("{}.socket", self.name)
    }
    /// The proxy's unit name.
    pub fn proxy_unit(&self) -> String {
        format!("{}.service", self.name)
    }
    /// The backend the proxy wants: generated or existing.
    pub fn backend_unit(&self) -> String {
        match &self.backend {
            Backend::Generated { .. } => backend_unit_name(&self.name),
            Backend::Existing(u) => u.clone(),
        }
    }
    /// Every unit this file generates.
    pub fn generated_units(&self) -> Vec<String> {
        let mut v = vec![self.socket_unit(), self.proxy_unit()];
        if matches!(self.backend, Backend::Generated { .. }) {
            v.push(backend_unit_name(&self.name));
        }
        v
    }
}

/// `NAME-backend.service`.
pub fn backend_unit_name(name: &str) -> String {
    format!("{name}{BACKEND_SUFFIX}.service")
}

/// The NAME of a `NAME.proxy` file name, or why it is not one a unit can be made from.
pub fn name_of(file_name: &str) -> Result<&str, String> {
    let name = file_name
        .strip_suffix(SUFFIX)
        .ok_or_else(|| format!("'{file_name}' does not end in {SUFFIX}"))?;
    if name.is_empty() {
        return Err(format!("'{file_name}' has no name before {SUFFIX}"));
    }
    if name.contains('@') {
        return Err(format!(
            "'{name}' contains '@': template instances cannot be generated"
        ));
    }
    if let Some(c) = name.chars().find(|c| !unit_name_char(*c)) {
        return Err(format!(
            "'{name}' is not a valid unit name: '{}' is not allowed (only ASCII letters, digits, ':', '-', '_', '.' and '\\')",
            c.escape_default()
        ));
    }
    let longest = backend_unit_name(name);
    if longest.len() > UNIT_NAME_MAX {
        return Err(format!(
            "'{name}' is too long: {longest} would be {} characters, more than the {UNIT_NAME_MAX} systemd allows",
            longest.len()
        ));
    }
    Ok(name)
}

fn unit_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\')
}

/// Whether `s` is a whole unit name systemd accepts (`foo.service`, `foo@bar.socket`).
fn valid_unit_name(s: &str) -> bool {
    let Some((prefix, kind)) = s.rsplit_once('.') else {
        return false;
    };
    s.len() <= UNIT_NAME_MAX
        && !prefix.is_empty()
        && UNIT_TYPES.contains(&kind)
        && prefix.chars().all(|c| unit_name_char(c) || c == '@')
        && !prefix.starts_with('@')
        && prefix.matches('@').count() <= 1
}

/// systemd's boolean spellings.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// One logical line of a file: a section header or a key, with where it came from.
struct Line<'a> {
    file: &'a str,
    line: usize,
    kind: LineKind,
}

enum LineKind {
    Section(String),
    Assign(String, String),
}

/// Splits a text into logical lines the way systemd reads unit files: `#` and `;` start
/// comments, a trailing backslash continues the line (comment lines inside are skipped),
/// keys and values are trimmed.
fn lines<'a>(src: &'a Source, errors: &mut Vec<Error>) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in src.text.lines().enumerate() {
        let n = i + 1;
        let t = raw.trim();
        if t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        let (start, mut joined) = match pending.take() {
            Some((start, mut acc)) => {
                acc.push(' ');
                acc.push_str(t);
                (start, acc)
            }
            None if t.is_empty() => continue,
            None => (n, t.to_string()),
        };
        if joined.ends_with('\\') {
            joined.pop();
            pending = Some((start, joined));
            continue;
        }
        push_line(src, start, &joined, &mut out, errors);
    }
    if let Some((start, joined)) = pending {
        push_line(src, start, &joined, &mut out, errors);
    }
    out
}

fn push_line<'a>(
    src: &'a Source,
    n: usize,
    t: &str,
    out: &mut Vec<Line<'a>>,
    errors: &mut Vec<Error>,
) {
    let t = t.trim();
    if t.is_empty() {
        return;
    }
    let kind = if let Some(rest) = t.strip_prefix('[') {
        match rest.strip_suffix(']') {
            Some(name) if !name.is_empty() && !name.contains(['[', ']']) => {
                LineKind::Section(name.to_string())
            }
            _ => {
                errors.push(Error {
                    file: src.path.clone(),
                    line: n,
                    message: format!(
                        "invalid section header '{t}' (nothing may follow the ']', comments included)"
                    ),
                });
                return;
            }
        }
    } else if let Some((k, v)) = t.split_once('=') {
        let k = k.trim();
        if k.is_empty() {
            errors.push(Error {
                file: src.path.clone(),
                line: n,
                message: format!("'{t}' has no key before the '='"),
            });
            return;
        }
        LineKind::Assign(k.to_string(), v.trim().to_string())
    } else {
        errors.push(Error {
            file: src.path.clone(),
            line: n,
            message: format!("'{t}' is neither a [Section] header nor a Key=value line"),
        });
        return;
    };
    out.push(Line {
        file: &src.path,
        line: n,
        kind,
    });
}

/// Reads one `.proxy` file and its drop-ins (already in the order to apply) into a [`Spec`].
/// `name` is the file's NAME (see [`name_of`]). Every problem found is returned, each naming
/// its file and line.
pub fn parse(name: &str, main: &Source, dropins: &[Source]) -> Result<Spec, Vec<Error>> {
    let mut errors = Vec::new();
    let mut st = State::default();
    for src in std::iter::once(main).chain(dropins) {
        let mut section: Option<String> = None;
        let mut bad_section = false;
        for l in lines(src, &mut errors) {
            let err = |message: String| Error {
                file: l.file.to_string(),
                line: l.line,
                message,
            };
            match l.kind {
                LineKind::Section(s) => {
                    bad_section = !SECTIONS.contains(&s.as_str());
                    if bad_section {
                        errors.push(err(format!(
                            "unknown section [{s}] (expected [Unit], [Socket], [Proxy], [Backend] or [Install])"
                        )));
                    }
                    st.headers
                        .entry(s.clone())
                        .or_insert_with(|| (l.file.to_string(), l.line));
                    section = Some(s);
                }
                LineKind::Assign(k, v) => {
                    if bad_section {
                        continue;
                    }
                    let Some(s) = section.as_deref() else {
                        errors.push(err(format!("{k}= is outside of any section")));
                        continue;
                    };
                    if let Err(m) = st.assign(s, &k, v, (l.file, l.line)) {
                        errors.push(err(m));
                    }
                }
            }
        }
    }
    let spec = st.finish(name, main, &mut errors);
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => Err(errors),
    }
}

const SECTIONS: &[&str] = &["Unit", "Socket", "Proxy", "Backend", "Install"];

/// The `[Proxy]` keys, with what each becomes on rsproxyd's command line. A new rsproxyd
/// option is one line here and its check in `State::proxy_key`.
pub const PROXY_KEYS: &[(&str, &str)] = &[
    ("Target", "TARGET"),
    ("ExitIdleTime", "--exit-idle-time="),
    ("ConnectTimeout", "--connect-timeout="),
    ("DrainTimeout", "--drain-timeout="),
    ("ConnectionsMax", "--connections-max="),
    ("Threads", "--threads="),
    ("ProxyProtocol", "--proxy-protocol="),
    ("ConnectionIdleTimeout", "--connection-idle-timeout="),
    ("HalfCloseTimeout", "--half-close-timeout="),
    ("QueueTimeout", "--queue-timeout="),
    ("SessionTimeout", "--session-timeout="),
];

/// What a generated proxy gets for a `[Proxy]` key the file leaves out, where that differs
/// from rsproxyd's own default: generated units bound silent relays, as the contrib units do.
fn generated_default(key: &str) -> Option<&'static str> {
    match key {
        "ConnectionIdleTimeout" => Some(GENERATED_CONNECTION_IDLE_TIMEOUT),
        "HalfCloseTimeout" => Some(GENERATED_HALF_CLOSE_TIMEOUT),
        _ => None,
    }
}

/// The `[Socket]` keys that make it listen.
const LISTEN_KEYS: &[&str] = &[
    "ListenStream",
    "ListenDatagram",
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
];

type At<'a> = (&'a str, usize);

/// What the lines said so far; later lines (and drop-ins) override earlier ones as in systemd.
#[derive(Default)]
struct State {
    unit: Vec<Entry>,
    socket: Vec<Entry>,
    listen: usize,
    /// Where each section was first opened, for errors about what it lacks.
    headers: BTreeMap<String, (String, usize)>,
    /// `Target=` was given but refused (so "no Target=" is not reported again).
    target_refused: bool,
    proxy: BTreeMap<&'static str, String>,
    exec_start: usize,
    exec_line: Option<(String, usize)>,
    backend_service: Vec<Entry>,
    backend_service_first: Option<(String, usize, String)>,
    unit_backend: Option<(String, String, usize)>,
    stop_with_proxy: Option<(bool, String, usize)>,
    install: Vec<(InstallKind, String)>,
}

impl State {
    fn assign(&mut self, section: &str, key: &str, value: String, at: At) -> Result<(), String> {
        match section {
            "Unit" => {
                if key == "SourcePath" {
                    return Err("SourcePath= is set by the generator (to this file)".into());
                }
                self.unit.push(Entry {
                    key: key.into(),
                    value,
                });
            }
            "Socket" => self.socket_key(key, value)?,
            "Proxy" => self.proxy_key(key, value)?,
            "Backend" => self.backend_key(key, value, at)?,
            "Install" => self.install_key(key, &value)?,
            _ => unreachable!("sections are checked before keys"),
        }
        Ok(())
    }

    fn socket_key(&mut self, key: &str, value: String) -> Result<(), String> {
        if LISTEN_KEYS.contains(&key) {
            // An empty Listen*= resets the list, as in systemd.
            self.listen = if value.is_empty() { 0 } else { self.listen + 1 };
        }
        match key {
            "Accept" if parse_bool(&value) == Some(true) => {
                return Err(
                    "Accept=yes is not supported: rsproxyd accepts the clients itself (leave Accept= at no)"
                        .into(),
                )
            }
            "Service" => {
                return Err(
                    "Service= is set by the generator (the socket activates NAME.service)".into(),
                )
            }
            _ => {}
        }
        self.socket.push(Entry {
            key: key.into(),
            value,
        });
        Ok(())
    }

    fn proxy_key(&mut self, key: &str, value: String) -> Result<(), String> {
        let Some((k, _)) = PROXY_KEYS.iter().find(|(k, _)| *k == key) else {
            let known: Vec<String> = PROXY_KEYS.iter().map(|(k, _)| format!("{k}=")).collect();
            return Err(format!(
                "unknown key {key}= in [Proxy] (known: {})",
                known.join(" ")
            ));
        };
        if value.is_empty() {
            // Back to the default, as an empty assignment does in systemd.
            self.proxy.remove(k);
            return Ok(());
        }
        match *k {
            "Target" => {
                if let Err(e) = value.parse::<Target>() {
                    self.target_refused = true;
                    return Err(format!("Target={value}: {e}"));
                }
            }
            "ExitIdleTime"
            | "ConnectTimeout"
            | "DrainTimeout"
            | "ConnectionIdleTimeout"
            | "HalfCloseTimeout"
            | "QueueTimeout"
            | "SessionTimeout" => {
                crate::timespan::parse(&value).map_err(|e| format!("{key}={value}: {e}"))?;
            }
            "ConnectionsMax" => match parse_c_unsigned(&value, u32::MAX.into()) {
                Some(n) if n >= 1 => {}
                _ => {
                    return Err(format!(
                        "ConnectionsMax={value}: expected a whole number, 1 or more"
                    ))
                }
            },
            "ProxyProtocol" if crate::proxy_header::Version::parse(&value).is_none() => {
                return Err(format!("ProxyProtocol={value}: expected v1 or v2"));
            }
            "Threads" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_THREADS).contains(&n) => {}
                _ => {
                    return Err(format!(
                        "Threads={value}: expected a whole number from 1 to {MAX_THREADS}"
                    ))
                }
            },
            _ => {}
        }
        self.proxy.insert(k, value);
        Ok(())
    }

    fn backend_key(&mut self, key: &str, value: String, at: At) -> Result<(), String> {
        match key {
            "Unit" => {
                if value.is_empty() {
                    self.unit_backend = None;
                } else if !valid_unit_name(&value) {
                    return Err(format!(
                        "Unit={value}: not a valid unit name (e.g. myapp.service)"
                    ));
                } else {
                    self.unit_backend = Some((value, at.0.into(), at.1));
                }
            }
            "StopWithProxy" => match parse_bool(&value) {
                Some(b) => self.stop_with_proxy = Some((b, at.0.into(), at.1)),
                None if value.is_empty() => self.stop_with_proxy = None,
                None => return Err(format!("StopWithProxy={value}: expected yes or no")),
            },
            _ if SERVICE_KEYS.binary_search(&key).is_ok() => {
                if key == "ExecStart" {
                    // An empty ExecStart= resets the list, as in systemd.
                    if value.is_empty() {
                        self.exec_start = 0;
                        self.exec_line = None;
                    } else {
                        self.exec_start += 1;
                        self.exec_line.get_or_insert((at.0.into(), at.1));
                    }
                } else if self.backend_service_first.is_none() {
                    self.backend_service_first = Some((at.0.into(), at.1, key.into()));
                }
                self.backend_service.push(Entry {
                    key: key.into(),
                    value,
                });
            }
            _ => {
                return Err(format!(
                    "unknown key {key}= in [Backend] (expected ExecStart=, Unit=, StopWithProxy= or a [Service] key of systemd.service(5)/systemd.exec(5))"
                ))
            }
        }
        Ok(())
    }

    fn install_key(&mut self, key: &str, value: &str) -> Result<(), String> {
        let kind = match key {
            "WantedBy" => InstallKind::WantedBy,
            "RequiredBy" => InstallKind::RequiredBy,
            "UpheldBy" => InstallKind::UpheldBy,
            _ => {
                return Err(format!(
                "{key}= in [Install] is not supported (WantedBy=, RequiredBy= and UpheldBy= are)"
            ))
            }
        };
        if value.is_empty() {
            self.install.retain(|(k, _)| *k != kind);
            return Ok(());
        }
        for unit in value.split_whitespace() {
            if !valid_unit_name(unit) {
                return Err(format!("{key}={value}: '{unit}' is not a valid unit name"));
            }
            if !self.install.iter().any(|(k, u)| *k == kind && u == unit) {
                self.install.push((kind, unit.into()));
            }
        }
        Ok(())
    }

    fn finish(self, name: &str, main: &Source, errors: &mut Vec<Error>) -> Option<Spec> {
        // An error about what a section lacks names its header, or line 1 when the
        // section is missing altogether.
        let missing = |section: &str, message: &str| match self.headers.get(section) {
            Some((f, l)) => Error {
                file: f.clone(),
                line: *l,
                message: message.to_string(),
            },
            None => Error {
                file: main.path.clone(),
                line: 1,
                message: format!("there is no [{section}] section: {message}"),
            },
        };
        if self.listen == 0 {
            errors.push(missing(
                "Socket",
                "no ListenStream= (or other Listen*=) line in [Socket]: the socket would listen on nothing",
            ));
        }
        let target = match self.proxy.get("Target") {
            // Checked when it was read.
            Some(t) => t.parse::<Target>().ok(),
            None if self.target_refused => None,
            None => {
                errors.push(missing(
                    "Proxy",
                    "no Target= in [Proxy]: where should rsproxyd connect to?",
                ));
                None
            }
        };
        let backend = match (&self.unit_backend, self.exec_start) {
            (Some((u, f, l)), n) if n > 0 => {
                let (ef, el) = self.exec_line.clone().unwrap_or_default();
                errors.push(Error {
                    file: f.clone(),
                    line: *l,
                    message: format!(
                        "both Unit={u} and ExecStart= (at {ef}:{el}) in [Backend]: give one"
                    ),
                });
                None
            }
            (Some((u, f, l)), _) => {
                let own = [
                    format!("{name}.socket"),
                    format!("{name}.service"),
                    backend_unit_name(name),
                ];
                if own.contains(u) {
                    errors.push(Error {
                        file: f.clone(),
                        line: *l,
                        message: format!("Unit={u}: that unit is generated from this file"),
                    });
                }
                if let Some((f, l, k)) = &self.backend_service_first {
                    errors.push(Error {
                        file: f.clone(),
                        line: *l,
                        message: format!(
                            "{k}= with Unit={u}: nothing is generated for an existing backend; set it in {u} (or a drop-in for it)"
                        ),
                    });
                }
                if let Some((_, f, l)) = &self.stop_with_proxy {
                    errors.push(Error {
                        file: f.clone(),
                        line: *l,
                        message: format!(
                            "StopWithProxy= with Unit={u}: only a generated backend can be stopped with the proxy (give {u} StopWhenUnneeded=yes instead)"
                        ),
                    });
                }
                Some(Backend::Existing(u.clone()))
            }
            (None, 0) => {
                errors.push(missing(
                    "Backend",
                    "no ExecStart= or Unit= in [Backend]: give the command of the backend daemon, or the unit that runs it",
                ));
                None
            }
            (None, _) => Some(Backend::Generated {
                service: self.backend_service.clone(),
                stop_with_proxy: self.stop_with_proxy.as_ref().map_or(true, |(b, ..)| *b),
            }),
        };
        let drain = match self.proxy.get("DrainTimeout") {
            Some(v) => crate::timespan::parse(v).ok().flatten(),
            None => Some(crate::limits::DEFAULT_DRAIN_TIMEOUT),
        };
        let proxy = Proxy {
            target_text: self.proxy.get("Target").cloned().unwrap_or_default(),
            target: target?,
            exit_idle_time: self
                .proxy
                .get("ExitIdleTime")
                .cloned()
                .unwrap_or_else(|| GENERATED_EXIT_IDLE_TIME.into()),
            flags: PROXY_KEYS
                .iter()
                .filter(|(k, _)| !matches!(*k, "Target" | "ExitIdleTime"))
                .filter_map(|(k, flag)| {
                    let value = match (self.proxy.get(k), generated_default(k)) {
                        (Some(v), _) => v.clone(),
                        (None, Some(d)) => d.to_string(),
                        (None, None) => return None,
                    };
                    Some(format!("{flag}{value}"))
                })
                .collect(),
            drain,
        };
        Some(Spec {
            name: name.into(),
            source: main.path.clone(),
            unit: self.unit,
            socket: self.socket,
            proxy,
            backend: backend?,
            install: self.install,
        })
    }
}

/// Finds unit names that two files would both generate (e.g. `a-backend.proxy` makes
/// `a-backend.service`, which is also the backend `a.proxy` generates). Returns, for each
/// file involved (by NAME), the error to skip it with.
pub fn check_collisions(specs: &[Spec]) -> BTreeMap<String, Error> {
    let mut owners: BTreeMap<String, Vec<&Spec>> = BTreeMap::new();
    for s in specs {
        for u in s.generated_units() {
            owners.entry(u).or_default().push(s);
        }
    }
    let mut out = BTreeMap::new();
    for (unit, who) in owners {
        if who.len() < 2 {
            continue;
        }
        for s in &who {
            let others: Vec<&str> = who
                .iter()
                .filter(|o| o.name != s.name)
                .map(|o| o.source.as_str())
                .collect();
            out.entry(s.name.clone()).or_insert_with(|| Error {
                file: s.source.clone(),
                line: 0,
                message: format!(
                    "{unit} would also be generated from {}: rename one of the files",
                    others.join(", ")
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
