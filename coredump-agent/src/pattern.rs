//! core_pattern → file names: compiles the kernel's `kernel.core_pattern` into a parser for the
//! file names it produces, so the watcher can read pid, signal, time… from a dump's name.
//!
//! The kernel expands `/proc/sys/kernel/core_pattern` (see `man 5 core`) once per crash; the agent
//! only ever sees the result, a file in a directory. [`CorePattern::parse`] therefore splits the
//! pattern into the directory to watch ([`CorePattern::dir`]) and a template for the file name
//! ([`CorePattern::file_template`]), and [`CorePattern::match_name`] runs that template backwards
//! to recover the [`NameFields`].
//!
//! Pipe patterns (`|helper args…`) work when the helper's command line names the file it writes,
//! typically through a shell redirection such as `> /core_dumps/core-%e-%t-%p-%s.gz`. Helpers that
//! keep their own storage (systemd-coredump, apport) have no such file; the operator must then
//! give the agent the file template with `--core-pattern`.

use std::path::{Path, PathBuf};

/// Suffix of files that pipe helpers are still writing.
///
/// Convention: a helper writes `<name>.part` and renames it to `<name>` once the dump is complete,
/// so the watcher never uploads half a core. Names ending in this suffix, and hidden names
/// (leading `.`), never match a pattern.
pub const TEMP_SUFFIX: &str = ".part";

/// `NAME_MAX`: no file name on Linux is longer, so longer names cannot come from the kernel.
const MAX_NAME_LEN: usize = 255;
/// `TASK_COMM_LEN - 1`: the kernel truncates `%e` to this many bytes.
const MAX_COMM_LEN: usize = 15;
/// `__NEW_UTS_LEN`: the longest hostname `%h` can expand to.
const MAX_HOSTNAME_LEN: usize = 64;
/// Distinct parses kept per name; two already prove a name ambiguous, a few more help debugging.
const MAX_PARSES: usize = 4;
/// Matcher steps allowed per name, so a hostile name against a specifier-heavy template costs a
/// couple of milliseconds at worst instead of an exponential number of splits. Real names need a
/// few dozen steps.
const STEP_BUDGET: usize = 20_000;
/// The pattern the agent recommends, quoted in error messages.
const EXAMPLE_PATTERN: &str = "/var/lib/coredump-agent/dumps/core.%P.%I.%s.%t.%e";

/// Why a `kernel.core_pattern` cannot be turned into a watchable directory and file template.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty, so the kernel writes no usable dump.
    #[error(
        "kernel.core_pattern is empty; set one the agent can watch, e.g. `sysctl -w kernel.core_pattern={example}`",
        example = EXAMPLE_PATTERN
    )]
    Empty,
    /// The pattern is relative, so dumps land in each crashing process's working directory.
    #[error(
        "kernel.core_pattern {pattern:?} is relative: the kernel writes each dump into the crashing process's working directory, which the agent cannot watch; set an absolute pattern, e.g. `sysctl -w kernel.core_pattern={example}`",
        example = EXAMPLE_PATTERN
    )]
    RelativePattern {
        /// The pattern as read.
        pattern: String,
    },
    /// A `%` specifier sits in a directory component, so dumps are spread over many directories.
    #[error(
        "core pattern {pattern:?} has a % specifier in its directory {dir:?}; the agent watches one fixed directory, so keep specifiers in the file name, e.g. `sysctl -w kernel.core_pattern={example}`",
        example = EXAMPLE_PATTERN
    )]
    SpecifierInDirectory {
        /// The pattern as read.
        pattern: String,
        /// The offending directory part.
        dir: String,
    },
    /// The path ends in `/`, so there is no file name to match.
    #[error(
        "core pattern {pattern:?} ends in '/' and names no file; append a file template, e.g. `sysctl -w kernel.core_pattern={example}`",
        example = EXAMPLE_PATTERN
    )]
    NoFileName {
        /// The pattern as read.
        pattern: String,
    },
    /// The file template only produces names the watcher skips as unfinished or hidden.
    #[error(
        "file template {template:?} produces names the agent skips as temporary (a leading '.' or a trailing {TEMP_SUFFIX:?}); use the final name instead, e.g. `sysctl -w kernel.core_pattern={example}`",
        example = EXAMPLE_PATTERN
    )]
    TemporaryName {
        /// The file template (last path component).
        template: String,
    },
    /// A pipe pattern whose command line names no output file the agent could find.
    #[error(
        "kernel.core_pattern {pattern:?} pipes dumps to {helper:?}, and no output file template could be found in its command line; pass --core-pattern with the absolute file template that helper writes, e.g. --core-pattern={example}",
        example = EXAMPLE_PATTERN
    )]
    PipeWithoutFile {
        /// The pattern as read.
        pattern: String,
        /// The helper program (first word after `|`).
        helper: String,
    },
    /// A socket pattern (`@…`, Linux 6.16+): dumps go to a listening service, not to files.
    #[error(
        "kernel.core_pattern {pattern:?} sends dumps to a socket, not to files; pass --core-pattern with the absolute file template the socket's server writes, e.g. --core-pattern={example}",
        example = EXAMPLE_PATTERN
    )]
    SocketPattern {
        /// The pattern as read.
        pattern: String,
    },
}

/// Compression of a dump file, recognised from its name suffix or its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (`.gz`), e.g. written by `gzip` or `pigz`.
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
    /// xz (`.xz`).
    Xz,
    /// LZ4 frame format (`.lz4`).
    Lz4,
}

impl Compression {
    const ALL: [Compression; 4] = [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Xz,
        Compression::Lz4,
    ];

    /// File name suffix, including the dot: `".gz"`, `".zst"`, `".xz"` or `".lz4"`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Xz => ".xz",
            Compression::Lz4 => ".lz4",
        }
    }

    fn magic(self) -> &'static [u8] {
        match self {
            Compression::Gzip => &[0x1f, 0x8b],
            Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
            Compression::Xz => &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
            Compression::Lz4 => &[0x04, 0x22, 0x4d, 0x18],
        }
    }

    /// Recognises the format from a file's first bytes; `None` for anything else, e.g. a raw
    /// ELF core. Pass at least 6 bytes to recognise every format.
    pub fn from_magic(bytes: &[u8]) -> Option<Compression> {
        Self::ALL.into_iter().find(|c| bytes.starts_with(c.magic()))
    }

    fn from_name(name: &str) -> Option<Compression> {
        Self::ALL.into_iter().find(|c| name.ends_with(c.suffix()))
    }
}

/// What a dump's file name says about the crash; `None` where the template has no such specifier.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NameFields {
    /// `%e`: thread name (comm), at most 15 bytes. The kernel writes `/` as `!`; kept as written.
    pub comm: Option<String>,
    /// `%E`: executable path, with the kernel's `!` turned back into `/` (a `!` that was in the
    /// path itself cannot be told apart).
    pub exe_path: Option<String>,
    /// `%f`: executable file name.
    pub exe_name: Option<String>,
    /// `%h`: hostname (at most 64 bytes).
    pub hostname: Option<String>,
    /// `%t`: time of the dump, seconds since the epoch.
    pub time: Option<u64>,
    /// `%p`: pid as seen in the process's own pid namespace.
    pub pid: Option<u32>,
    /// `%P`: pid in the initial (host) pid namespace.
    pub host_pid: Option<u32>,
    /// `%i`: tid as seen in the process's own pid namespace.
    pub tid: Option<u32>,
    /// `%I`: tid in the initial (host) pid namespace.
    pub host_tid: Option<u32>,
    /// `%s`: number of the signal that caused the dump.
    pub signal: Option<u32>,
    /// `%u`: real uid of the process.
    pub uid: Option<u32>,
    /// `%g`: real gid of the process.
    pub gid: Option<u32>,
    /// `%c`: core size soft limit in bytes; `u64::MAX` means unlimited.
    pub core_limit: Option<u64>,
    /// `%d`: the process's dumpable mode (0, 1 or 2).
    pub dumpable: Option<u32>,
    /// From a `.gz`/`.zst`/`.xz`/`.lz4` suffix, in the template or appended to the name.
    pub compression: Option<Compression>,
}

/// A string specifier; matches one or more bytes (the kernel turns an empty value into `!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextField {
    Comm,
    ExePath,
    ExeName,
    Hostname,
}

impl TextField {
    fn max_len(self) -> usize {
        match self {
            TextField::Comm => MAX_COMM_LEN,
            TextField::Hostname => MAX_HOSTNAME_LEN,
            TextField::ExePath | TextField::ExeName => MAX_NAME_LEN,
        }
    }
}

/// A numeric specifier; matches plain ASCII decimal, as the kernel prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberField {
    Time,
    Pid,
    HostPid,
    Tid,
    HostTid,
    Signal,
    Uid,
    Gid,
    CoreLimit,
    Dumpable,
}

impl NumberField {
    fn max(self) -> u64 {
        match self {
            NumberField::Time | NumberField::CoreLimit => u64::MAX,
            _ => u32::MAX.into(),
        }
    }
}

/// A `%` specifier the matcher understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Text(TextField),
    Number(NumberField),
}

/// The one table mapping specifier letters to fields, used for compiling and rendering.
const SPECIFIERS: [(char, Field); 14] = [
    ('e', Field::Text(TextField::Comm)),
    ('E', Field::Text(TextField::ExePath)),
    ('f', Field::Text(TextField::ExeName)),
    ('h', Field::Text(TextField::Hostname)),
    ('t', Field::Number(NumberField::Time)),
    ('p', Field::Number(NumberField::Pid)),
    ('P', Field::Number(NumberField::HostPid)),
    ('i', Field::Number(NumberField::Tid)),
    ('I', Field::Number(NumberField::HostTid)),
    ('s', Field::Number(NumberField::Signal)),
    ('u', Field::Number(NumberField::Uid)),
    ('g', Field::Number(NumberField::Gid)),
    ('c', Field::Number(NumberField::CoreLimit)),
    ('d', Field::Number(NumberField::Dumpable)),
];

impl Field {
    fn from_specifier(letter: char) -> Option<Field> {
        SPECIFIERS
            .iter()
            .find(|(l, _)| *l == letter)
            .map(|&(_, field)| field)
    }

    fn specifier(self) -> char {
        SPECIFIERS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or('?', |&(letter, _)| letter)
    }
}

/// One piece of a compiled file template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Field(Field),
}

/// Appends literal text, merging with a preceding literal so the matcher sees maximal literals.
fn push_literal(segments: &mut Vec<Segment>, text: &str) {
    match segments.last_mut() {
        Some(Segment::Literal(last)) => last.push_str(text),
        _ => segments.push(Segment::Literal(text.to_owned())),
    }
}

fn compile(template: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            push_literal(&mut segments, c.encode_utf8(&mut [0; 4]));
            continue;
        }
        match chars.next() {
            Some('%') => push_literal(&mut segments, "%"),
            // The kernel drops unknown specifiers and a trailing lone '%': they expand to nothing.
            Some(c) => segments.extend(Field::from_specifier(c).map(Segment::Field)),
            None => {}
        }
    }
    segments
}

/// Writes segments back as a template, so [`CorePattern::file_template`] shows exactly what is
/// matched (unknown specifiers gone, an appended `.%p` visible).
fn render(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => text.replace('%', "%%"),
            Segment::Field(field) => format!("%{}", field.specifier()),
        })
        .collect()
}

/// A value read from the name for one specifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture<'n> {
    Text(TextField, &'n str),
    Number(NumberField, u64),
}

impl Capture<'_> {
    /// Same specifier, different value: a template like `%p.%p` forbids that.
    fn conflicts(self, other: Capture<'_>) -> bool {
        match (self, other) {
            (Capture::Text(a, x), Capture::Text(b, y)) => a == b && x != y,
            (Capture::Number(a, x), Capture::Number(b, y)) => a == b && x != y,
            _ => false,
        }
    }

    fn store(self, fields: &mut NameFields) {
        match self {
            Capture::Text(field, value) => {
                let value = value.to_owned();
                match field {
                    TextField::Comm => fields.comm = Some(value),
                    // The kernel escapes '/' as '!' to keep the path in one file name; undo it.
                    TextField::ExePath => fields.exe_path = Some(value.replace('!', "/")),
                    TextField::ExeName => fields.exe_name = Some(value),
                    TextField::Hostname => fields.hostname = Some(value),
                }
            }
            Capture::Number(field, value) => {
                // Matching already capped 32-bit fields at u32::MAX, so this never drops a value.
                let small = u32::try_from(value).ok();
                match field {
                    NumberField::Time => fields.time = Some(value),
                    NumberField::CoreLimit => fields.core_limit = Some(value),
                    NumberField::Pid => fields.pid = small,
                    NumberField::HostPid => fields.host_pid = small,
                    NumberField::Tid => fields.tid = small,
                    NumberField::HostTid => fields.host_tid = small,
                    NumberField::Signal => fields.signal = small,
                    NumberField::Uid => fields.uid = small,
                    NumberField::Gid => fields.gid = small,
                    NumberField::Dumpable => fields.dumpable = small,
                }
            }
        }
    }
}

/// Cheap look-ahead: can `rest` start whatever the remaining segments need? Pruning here keeps
/// string specifiers from trying every length.
fn can_continue(segments: &[Segment], rest: &str) -> bool {
    match segments.first() {
        None => rest.is_empty(),
        Some(Segment::Literal(text)) => rest.starts_with(text.as_str()),
        Some(Segment::Field(Field::Number(_))) => rest.starts_with(|c: char| c.is_ascii_digit()),
        Some(Segment::Field(Field::Text(_))) => !rest.is_empty(),
    }
}

/// Backtracking search for every distinct way a name fits the segments, within a step budget.
struct Search<'n> {
    steps: usize,
    /// The budget or the parse cap cut the search short: more parses may exist.
    truncated: bool,
    compression: Option<Compression>,
    captures: Vec<Capture<'n>>,
    found: Vec<NameFields>,
}

impl<'n> Search<'n> {
    fn new() -> Self {
        Search {
            steps: 0,
            truncated: false,
            compression: None,
            captures: Vec::new(),
            found: Vec::new(),
        }
    }

    fn run(&mut self, segments: &[Segment], name: &'n str, compression: Option<Compression>) {
        self.compression = compression;
        self.walk(segments, name);
    }

    /// Charges one unit of work; false once the budget or the parse cap says to stop.
    fn tick(&mut self) -> bool {
        if self.steps >= STEP_BUDGET || self.found.len() >= MAX_PARSES {
            self.truncated = true;
            return false;
        }
        self.steps += 1;
        true
    }

    fn walk(&mut self, segments: &[Segment], rest: &'n str) {
        if !self.tick() {
            return;
        }
        let Some((segment, tail)) = segments.split_first() else {
            if rest.is_empty() {
                self.record();
            }
            return;
        };
        match segment {
            Segment::Literal(text) => {
                if let Some(after) = rest.strip_prefix(text.as_str()) {
                    self.walk(tail, after);
                }
            }
            &Segment::Field(Field::Text(field)) => {
                let longest = rest.len().min(field.max_len());
                for len in (1..=longest).filter(|&len| rest.is_char_boundary(len)) {
                    if self.truncated {
                        break;
                    }
                    let (value, after) = rest.split_at(len);
                    self.descend(Capture::Text(field, value), tail, after);
                }
            }
            &Segment::Field(Field::Number(field)) => {
                let mut value: u64 = 0;
                for (len, digit) in rest.bytes().take_while(u8::is_ascii_digit).enumerate() {
                    // The kernel prints plain decimal, never zero-padded: "0" is a whole number.
                    if self.truncated || (len > 0 && value == 0) {
                        break;
                    }
                    let next = value.checked_mul(10);
                    let next = next.and_then(|v| v.checked_add(u64::from(digit - b'0')));
                    let Some(next) = next.filter(|&v| v <= field.max()) else {
                        break; // longer prefixes are only larger
                    };
                    value = next;
                    self.descend(Capture::Number(field, value), tail, &rest[len + 1..]);
                }
            }
        }
    }

    fn descend(&mut self, capture: Capture<'n>, tail: &[Segment], after: &'n str) {
        // Dead ends found by the look-ahead are not charged: they cost one comparison each.
        if !can_continue(tail, after)
            || !self.tick()
            || self.captures.iter().any(|c| c.conflicts(capture))
        {
            return;
        }
        self.captures.push(capture);
        self.walk(tail, after);
        self.captures.pop();
    }

    fn record(&mut self) {
        let mut fields = NameFields {
            compression: self.compression,
            ..NameFields::default()
        };
        for capture in &self.captures {
            capture.store(&mut fields);
        }
        if !self.found.contains(&fields) {
            self.found.push(fields);
        }
    }
}

/// Could the kernel (or a helper, once finished) have produced this name at all?
fn is_candidate(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.contains(['/', '\0'])
        && !name.starts_with('.')
        && !name.ends_with(TEMP_SUFFIX)
}

/// Finds the output file template in a pipe helper's command line (see [`CorePattern::parse`]).
fn pipe_output_path(command: &str) -> Option<&str> {
    let tokens: Vec<&str> = command.split_whitespace().collect();
    let redirected = tokens.iter().enumerate().filter_map(|(i, &token)| {
        match token.rsplit_once('>') {
            // `>/dir/f`, `>>/dir/f`, `2>/dev/null`; a bare `>` yields "" and is filtered out.
            Some((_, target)) => Some(target),
            None if i > 0 && tokens[i - 1].ends_with('>') => Some(token),
            None => None,
        }
    });
    // Scan from the end: the final redirection is where a shell pipeline's output goes.
    redirected
        .map(unquote)
        .rfind(|path| is_template_path(path))
        .or_else(|| {
            tokens.iter().map(|token| unquote(token)).rfind(|path| {
                is_template_path(path)
                    && path
                        .rsplit_once('/')
                        .is_some_and(|(dir, _)| !dir.contains('%'))
            })
        })
}

/// Strips shell quotes around a word, as in `sh -c 'cat >/dir/core.%p'`.
fn unquote(token: &str) -> &str {
    token.trim_matches(['"', '\''])
}

fn is_template_path(path: &str) -> bool {
    path.starts_with('/') && path.contains('%')
}

/// A compiled `kernel.core_pattern`: where dumps land and how to read their file names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePattern {
    raw: String,
    pipe: bool,
    dir: PathBuf,
    segments: Vec<Segment>,
    file_template: String,
    /// Set when the template itself ends in a compression suffix.
    compression: Option<Compression>,
}

impl CorePattern {
    /// Compiles a `kernel.core_pattern` value, as read from `/proc/sys/kernel/core_pattern`
    /// (a trailing newline is ignored).
    ///
    /// `core_uses_pid` is the value of `/proc/sys/kernel/core_uses_pid`: when true and a *file*
    /// pattern has no `%p`, the kernel appends `.%p` (`%P` does not count); it never does so for
    /// pipe patterns.
    ///
    /// File patterns must be absolute with no `%` in the directory part. For pipe patterns
    /// (`|helper …`) the output file is found heuristically: the last absolute path containing a
    /// `%` that is the target of a `>` redirection (glued, `>/dir/f`, or as the next word);
    /// failing that, the last absolute path containing a `%` only in its file name. Surrounding
    /// quotes are ignored. Helpers that write no such file (systemd-coredump, apport) yield
    /// [`PatternError::PipeWithoutFile`].
    pub fn parse(core_pattern: &str, core_uses_pid: bool) -> Result<CorePattern, PatternError> {
        let raw = core_pattern.trim_end_matches(['\n', '\r']);
        let owned = || raw.to_owned();
        if raw.trim().is_empty() {
            return Err(PatternError::Empty);
        }
        let pipe = raw.starts_with('|');
        let path = if let Some(command) = raw.strip_prefix('|') {
            pipe_output_path(command).ok_or_else(|| PatternError::PipeWithoutFile {
                pattern: owned(),
                helper: command.split_whitespace().next().unwrap_or("").to_owned(),
            })?
        } else if raw.starts_with('@') {
            return Err(PatternError::SocketPattern { pattern: owned() });
        } else {
            raw
        };
        let (dir, file) = match path.rsplit_once('/') {
            Some(split) if path.starts_with('/') => split,
            _ => return Err(PatternError::RelativePattern { pattern: owned() }),
        };
        if dir.contains('%') {
            return Err(PatternError::SpecifierInDirectory {
                pattern: owned(),
                dir: dir.to_owned(),
            });
        }
        if file.is_empty() {
            return Err(PatternError::NoFileName { pattern: owned() });
        }

        let mut segments = compile(file);
        let has_pid = segments.contains(&Segment::Field(Field::Number(NumberField::Pid)));
        if core_uses_pid && !pipe && !has_pid {
            push_literal(&mut segments, ".");
            segments.push(Segment::Field(Field::Number(NumberField::Pid)));
        }
        let file_template = render(&segments);
        if file_template.starts_with('.') || file_template.ends_with(TEMP_SUFFIX) {
            return Err(PatternError::TemporaryName {
                template: file_template,
            });
        }
        let compression = match segments.last() {
            Some(Segment::Literal(text)) => Compression::from_name(text),
            _ => None,
        };
        Ok(CorePattern {
            raw: owned(),
            pipe,
            dir: PathBuf::from(if dir.is_empty() { "/" } else { dir }),
            segments,
            file_template,
            compression,
        })
    }

    /// Whether the kernel pipes dumps to a helper (`|…`) rather than writing them itself.
    pub fn is_pipe(&self) -> bool {
        self.pipe
    }

    /// The pattern as given, without its trailing newline.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The directory dumps land in: absolute, free of specifiers.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The template for the last path component, e.g. `core-%e-%t-%p-%s.gz`, as matched: unknown
    /// specifiers dropped and `.%p` appended when `core_uses_pid` applies.
    pub fn file_template(&self) -> &str {
        &self.file_template
    }

    /// Whether names carry host-namespace ids (`%P` or `%I`), which tie a dump to a host process
    /// even when it crashed inside a container.
    pub fn has_host_pid(&self) -> bool {
        self.segments.iter().any(|segment| {
            matches!(
                segment,
                Segment::Field(Field::Number(NumberField::HostPid | NumberField::HostTid))
            )
        })
    }

    /// Reads the fields from a dump's file name (its last path component).
    ///
    /// Returns `None` when the name is not one this pattern produces, and also when it can be
    /// read in more than one way with different values: string specifiers can swallow
    /// separators (`%e.%h` on `a.b.c`), and when the template has no compression suffix a name
    /// such as `core.1.app.gz` may carry a comm `app.gz` or a comm `app` plus gzip. The matcher
    /// does not guess; use [`CorePattern::match_name_all`] to see the candidates (for the
    /// compression case, [`Compression::from_magic`] on the file's first bytes picks one).
    ///
    /// Never matches: names longer than 255 bytes, names containing `/`, hidden names (leading
    /// `.`) and names ending in [`TEMP_SUFFIX`]. Numeric specifiers match plain ASCII decimal
    /// without leading zeros, as the kernel prints them; `%e` matches at most 15 bytes and `%h`
    /// at most 64.
    pub fn match_name(&self, file_name: &str) -> Option<NameFields> {
        let search = self.search(file_name);
        match <[NameFields; 1]>::try_from(search.found) {
            Ok([fields]) if !search.truncated => Some(fields),
            _ => None,
        }
    }

    /// Every distinct reading of `file_name` (at most a few, in no particular order); empty when
    /// the name does not match. On a pathological name the bounded search may stop early and
    /// return only some readings; [`CorePattern::match_name`] then answers `None`.
    pub fn match_name_all(&self, file_name: &str) -> Vec<NameFields> {
        self.search(file_name).found
    }

    fn search<'n>(&self, file_name: &'n str) -> Search<'n> {
        let mut search = Search::new();
        if !is_candidate(file_name) {
            return search;
        }
        search.run(&self.segments, file_name, self.compression);
        // Some pipe helpers compress and append a suffix the template does not mention.
        if self.compression.is_none() {
            for compression in Compression::ALL {
                if let Some(stem) = file_name.strip_suffix(compression.suffix()) {
                    search.run(&self.segments, stem, Some(compression));
                }
            }
        }
        search
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(core_pattern: &str) -> CorePattern {
        CorePattern::parse(core_pattern, false).expect("pattern should parse")
    }

    fn fields(core_pattern: &str, name: &str) -> NameFields {
        pattern(core_pattern)
            .match_name(name)
            .unwrap_or_else(|| panic!("{name:?} should match {core_pattern:?}"))
    }

    #[test]
    fn seed_pattern_lets_comm_contain_dashes_and_digits() {
        let f = fields(
            "/core_dumps/core-%e-%t-%p-%s",
            "core-my-app-2-1700000000-123-11",
        );
        assert_eq!(f.comm.as_deref(), Some("my-app-2"));
        assert_eq!(f.time, Some(1_700_000_000));
        assert_eq!(f.pid, Some(123));
        assert_eq!(f.signal, Some(11));
        assert_eq!(f.compression, None);
    }

    #[test]
    fn systemd_like_pattern_lets_comm_contain_dots() {
        let f = fields("/var/crash/core.%e.%P.%t", "core.my.app.v2.4242.1700000000");
        assert_eq!(f.comm.as_deref(), Some("my.app.v2"));
        assert_eq!(f.host_pid, Some(4242));
        assert_eq!(f.time, Some(1_700_000_000));
    }

    #[test]
    fn agent_default_pattern_with_space_in_comm() {
        let p = pattern("/var/lib/coredump-agent/dumps/core.%P.%I.%s.%t.%e");
        assert!(p.has_host_pid());
        assert!(!p.is_pipe());
        assert_eq!(p.dir(), Path::new("/var/lib/coredump-agent/dumps"));
        assert_eq!(p.file_template(), "core.%P.%I.%s.%t.%e");
        let f = p.match_name("core.4242.4243.6.1700000000.my app").unwrap();
        let expected = NameFields {
            comm: Some("my app".into()),
            host_pid: Some(4242),
            host_tid: Some(4243),
            signal: Some(6),
            time: Some(1_700_000_000),
            ..NameFields::default()
        };
        assert_eq!(f, expected);
    }

    #[test]
    fn remaining_specifiers_fill_their_fields() {
        let f = fields(
            "/d/%f_%h_%u_%g_%i_%d_%c",
            "app_node-1.example_1000_100_77_1_18446744073709551615",
        );
        assert_eq!(f.exe_name.as_deref(), Some("app"));
        assert_eq!(f.hostname.as_deref(), Some("node-1.example"));
        assert_eq!(
            (f.uid, f.gid, f.tid, f.dumpable),
            (Some(1000), Some(100), Some(77), Some(1))
        );
        assert_eq!(f.core_limit, Some(u64::MAX));
    }

    #[test]
    fn every_specifier_round_trips_through_file_template() {
        let all: String = SPECIFIERS
            .iter()
            .map(|(letter, _)| format!("%{letter}-"))
            .collect();
        assert_eq!(pattern(&format!("/d/{all}")).file_template(), all);
    }

    #[test]
    fn numeric_specifiers_take_ascii_digits_only() {
        let p = pattern("/d/core.%p");
        assert_eq!(p.match_name("core.42").unwrap().pid, Some(42));
        for name in [
            "core.4a",
            "core.-1",
            "core.+1",
            "core.\u{661}\u{662}",
            "core.",
        ] {
            assert_eq!(p.match_name(name), None, "{name:?}");
        }
    }

    #[test]
    fn numbers_with_leading_zeros_are_not_kernel_output() {
        let p = pattern("/d/core.%p");
        assert_eq!(p.match_name("core.0123"), None);
        assert_eq!(p.match_name("core.0").unwrap().pid, Some(0));
    }

    #[test]
    fn u32_fields_reject_overflow_and_u64_fields_do_not() {
        let p = pattern("/d/core.%p");
        assert_eq!(p.match_name("core.4294967295").unwrap().pid, Some(u32::MAX));
        assert_eq!(p.match_name("core.4294967296"), None);
        let limit = pattern("/d/core.%c");
        assert_eq!(limit.match_name("core.18446744073709551616"), None);
    }

    #[test]
    fn exe_path_bangs_become_slashes_but_comm_keeps_them() {
        let f = fields("/d/core.%E.%p", "core.!usr!bin!my-app.7");
        assert_eq!(f.exe_path.as_deref(), Some("/usr/bin/my-app"));
        let f = fields("/d/core.%e.%p", "core.kworker!0.7");
        assert_eq!(f.comm.as_deref(), Some("kworker!0"));
    }

    #[test]
    fn comm_is_at_most_15_bytes() {
        let p = pattern("/d/core.%e.%p");
        assert!(p.match_name("core.fifteen-chars-x.1").is_some());
        assert_eq!(p.match_name("core.sixteen-chars-xy.1"), None);
    }

    #[test]
    fn hostname_is_at_most_64_bytes() {
        let p = pattern("/d/core.%h.%p");
        let ok = format!("core.{}.1", "h".repeat(64));
        let too_long = format!("core.{}.1", "h".repeat(65));
        assert_eq!(p.match_name(&ok).unwrap().hostname.unwrap().len(), 64);
        assert_eq!(p.match_name(&too_long), None);
    }

    #[test]
    fn double_percent_is_a_literal_percent() {
        let p = pattern("/d/core%%%p");
        assert_eq!(p.file_template(), "core%%%p");
        assert_eq!(p.match_name("core%12").unwrap().pid, Some(12));
        assert_eq!(p.match_name("core12"), None);
    }

    #[test]
    fn unknown_specifier_and_trailing_percent_expand_to_nothing() {
        let p = pattern("/d/core.%z%p%");
        assert_eq!(p.file_template(), "core.%p");
        assert_eq!(p.match_name("core.5").unwrap().pid, Some(5));
        assert_eq!(p.match_name("core.z5"), None);
    }

    #[test]
    fn core_uses_pid_appends_pid_to_file_patterns_without_p() {
        let p = CorePattern::parse("/d/core.%P", true).unwrap();
        assert_eq!(p.file_template(), "core.%P.%p");
        let f = p.match_name("core.100.7").unwrap();
        assert_eq!((f.host_pid, f.pid), (Some(100), Some(7)));

        let plain = CorePattern::parse("/d/core", true).unwrap();
        assert_eq!(plain.file_template(), "core.%p");
        assert_eq!(plain.match_name("core"), None);
    }

    #[test]
    fn core_uses_pid_leaves_patterns_with_p_and_pipes_alone() {
        let with_pid = CorePattern::parse("/d/core.%p", true).unwrap();
        assert_eq!(with_pid.file_template(), "core.%p");
        let pipe =
            CorePattern::parse("|/bin/sh -c $@ -- eval exec cat > /d/core.%P", true).unwrap();
        assert_eq!(pipe.file_template(), "core.%P");
    }

    #[test]
    fn name_length_limit_is_255_bytes() {
        let p = pattern("/d/core.%E");
        let max = format!("core.{}", "x".repeat(250));
        assert_eq!(max.len(), 255);
        assert!(p.match_name(&max).is_some());
        let over = format!("{max}x");
        assert_eq!(p.match_name(&over), None);
    }

    #[test]
    fn names_with_slash_or_empty_never_match() {
        let p = pattern("/d/%E");
        assert_eq!(p.match_name("usr/bin/app"), None);
        assert_eq!(p.match_name(""), None);
    }

    #[test]
    fn temporary_and_hidden_names_never_match() {
        let p = pattern("/d/core.%e.%p");
        assert!(p.match_name("core.app.1").is_some());
        assert_eq!(p.match_name(&format!("core.app.1{TEMP_SUFFIX}")), None);
        assert_eq!(p.match_name("core.app.1.gz.part"), None);
        let any = pattern("/d/%e");
        assert_eq!(any.match_name(".hidden"), None);
    }

    #[test]
    fn template_that_only_makes_temporary_names_is_rejected() {
        for bad in ["/d/.core.%p", "/d/core.%p.part"] {
            let err = CorePattern::parse(bad, false).unwrap_err();
            assert!(
                matches!(err, PatternError::TemporaryName { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("\".part\""), "{err}");
        }
    }

    #[test]
    fn literal_text_must_match_exactly() {
        let p = pattern("/d/core-%e-%p");
        assert_eq!(p.match_name("Core-app-1"), None);
        assert_eq!(p.match_name("core-app-1x"), None);
        assert_eq!(p.match_name("random.txt"), None);
    }

    #[test]
    fn template_suffix_sets_compression() {
        let p = pattern("/core_dumps/core-%e-%p.zst");
        let f = p.match_name("core-app-3.zst").unwrap();
        assert_eq!(f.compression, Some(Compression::Zstd));
        assert_eq!(p.match_name("core-app-3"), None);
        // The suffix is part of the template, so it is not stripped a second time.
        assert_eq!(p.match_name("core-app-3.zst.gz"), None);
    }

    #[test]
    fn suffix_appended_by_a_helper_is_accepted() {
        let p = pattern("/d/core-%e-%t-%p-%s");
        for c in Compression::ALL {
            let name = format!("core-app-1700000000-12-11{}", c.suffix());
            let f = p.match_name(&name).unwrap();
            assert_eq!((f.compression, f.pid), (Some(c), Some(12)));
        }
        assert_eq!(
            p.match_name("core-app-1700000000-12-11")
                .unwrap()
                .compression,
            None
        );
    }

    #[test]
    fn suffix_that_could_belong_to_comm_is_ambiguous() {
        let p = pattern("/d/core.%p.%e");
        assert_eq!(p.match_name("core.1.app.gz"), None);
        let all = p.match_name_all("core.1.app.gz");
        assert_eq!(all.len(), 2);
        assert!(
            all.iter()
                .any(|f| f.comm.as_deref() == Some("app.gz") && f.compression.is_none())
        );
        assert!(
            all.iter()
                .any(|f| f.comm.as_deref() == Some("app")
                    && f.compression == Some(Compression::Gzip))
        );
    }

    #[test]
    fn ambiguous_string_split_returns_none_and_lists_parses() {
        let p = pattern("/d/%e.%h");
        assert_eq!(p.match_name("a.b.c"), None);
        let mut comms: Vec<_> = p
            .match_name_all("a.b.c")
            .into_iter()
            .map(|f| (f.comm.unwrap(), f.hostname.unwrap()))
            .collect();
        comms.sort();
        assert_eq!(
            comms,
            [("a".into(), "b.c".into()), ("a.b".into(), "c".into())]
        );
    }

    #[test]
    fn adjacent_numbers_are_ambiguous_and_parses_are_capped() {
        let p = pattern("/d/core.%p%s");
        assert_eq!(p.match_name("core.1211"), None);
        assert_eq!(p.match_name_all("core.1211").len(), 3);
        assert_eq!(p.match_name_all("core.123456789").len(), MAX_PARSES);
        assert_eq!(
            p.match_name("core.12").unwrap(),
            NameFields {
                pid: Some(1),
                signal: Some(2),
                ..NameFields::default()
            }
        );
    }

    #[test]
    fn repeated_specifier_must_repeat_its_value() {
        let p = pattern("/d/core.%p.%e.%p");
        assert_eq!(p.match_name("core.1.app.1").unwrap().pid, Some(1));
        assert_eq!(p.match_name("core.1.app.2"), None);
    }

    #[test]
    fn hostile_name_is_bounded_by_the_step_budget() {
        // Distinct string specifiers back to back: millions of splits, none of which fits.
        let p = pattern("/d/%E%f%h%ex");
        let name = "a".repeat(MAX_NAME_LEN);
        let started = std::time::Instant::now();
        let search = p.search(&name);
        assert!(search.truncated);
        assert!(search.steps <= STEP_BUDGET);
        assert!(search.found.is_empty());
        assert_eq!(p.match_name(&name), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));

        let seed = pattern("/d/core-%e-%t-%p-%s");
        let dashes = format!("core-{}", "1-".repeat(125));
        assert_eq!(seed.match_name(&dashes), None);
    }

    #[test]
    fn pipe_to_pigz_through_shell_redirection() {
        let p = pattern(
            "|/bin/sh -c $@ -- eval exec /usr/bin/pigz > /core_dumps/core-%e-%t-%p-%s.gz\n",
        );
        assert!(p.is_pipe());
        assert_eq!(p.dir(), Path::new("/core_dumps"));
        assert_eq!(p.file_template(), "core-%e-%t-%p-%s.gz");
        let f = p.match_name("core-my-app-1700000000-42-6.gz").unwrap();
        assert_eq!(f.comm.as_deref(), Some("my-app"));
        assert_eq!(f.compression, Some(Compression::Gzip));
    }

    #[test]
    fn pipe_to_cat_with_host_pid() {
        let p =
            pattern("|/bin/sh -c $@ -- eval exec cat > /var/lib/coredump-agent/dumps/core.%P.%s");
        assert_eq!(p.dir(), Path::new("/var/lib/coredump-agent/dumps"));
        assert_eq!(p.file_template(), "core.%P.%s");
        assert!(p.has_host_pid());
        let f = p.match_name("core.9000.11").unwrap();
        assert_eq!((f.host_pid, f.signal), (Some(9000), Some(11)));
    }

    #[test]
    fn pipe_with_redirection_glued_or_quoted() {
        let glued = pattern("|/bin/sh -c $@ -- eval exec cat >/core_dumps/core-%e.%p");
        assert_eq!(glued.dir(), Path::new("/core_dumps"));
        assert_eq!(glued.file_template(), "core-%e.%p");

        let quoted = pattern("|/bin/sh -c 'zstd -q >/dumps/core.%p.zst 2>/dev/null'");
        assert_eq!(quoted.dir(), Path::new("/dumps"));
        assert_eq!(quoted.file_template(), "core.%p.zst");
    }

    #[test]
    fn pipe_redirection_wins_over_other_paths_and_falls_back_to_any_template_path() {
        let both = pattern("|/usr/bin/helper --log /var/log/h/%p.log > /dumps/core.%p");
        assert_eq!(both.dir(), Path::new("/dumps"));
        let tee = pattern("|/usr/bin/tee /dumps/core.%e.%p");
        assert_eq!(
            (tee.dir(), tee.file_template()),
            (Path::new("/dumps"), "core.%e.%p")
        );
    }

    #[test]
    fn pipe_helpers_without_a_file_need_the_flag() {
        for helper in [
            "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h",
            "|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E",
            "|",
        ] {
            let err = CorePattern::parse(helper, false).unwrap_err();
            assert!(
                matches!(err, PatternError::PipeWithoutFile { .. }),
                "{helper}: {err}"
            );
            assert!(err.to_string().contains("--core-pattern"), "{err}");
        }
    }

    #[test]
    fn relative_patterns_are_rejected_with_a_fix() {
        for relative in ["core", "core.%p", "dumps/core.%p"] {
            let err = CorePattern::parse(relative, true).unwrap_err();
            assert!(
                matches!(err, PatternError::RelativePattern { .. }),
                "{relative}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("working directory"), "{message}");
            assert!(
                message.contains("sysctl -w kernel.core_pattern=/var/lib/coredump-agent/dumps/core.%P.%I.%s.%t.%e"),
                "{message}"
            );
        }
    }

    #[test]
    fn specifier_in_directory_is_rejected() {
        for bad in [
            "/dumps/%h/core.%p",
            "|/bin/sh -c $@ -- eval exec cat > /dumps/%e/core.%p",
        ] {
            let err = CorePattern::parse(bad, false).unwrap_err();
            assert!(
                matches!(err, PatternError::SpecifierInDirectory { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn empty_patterns_and_missing_file_names_are_rejected() {
        for empty in ["", "\n", "  \n"] {
            assert!(matches!(
                CorePattern::parse(empty, false),
                Err(PatternError::Empty)
            ));
        }
        let err = CorePattern::parse("/var/crash/", false).unwrap_err();
        assert!(matches!(err, PatternError::NoFileName { .. }), "{err}");
    }

    #[test]
    fn socket_patterns_are_rejected() {
        let err = CorePattern::parse("@/run/systemd/coredump", false).unwrap_err();
        assert!(matches!(err, PatternError::SocketPattern { .. }), "{err}");
        assert!(err.to_string().contains("--core-pattern"));
    }

    #[test]
    fn raw_drops_trailing_newline_and_root_dir_is_slash() {
        let p = pattern("/core.%p\n");
        assert_eq!(p.raw(), "/core.%p");
        assert_eq!(p.dir(), Path::new("/"));
        assert_eq!(p.file_template(), "core.%p");
    }

    #[test]
    fn compression_suffixes_and_magic() {
        let cases: [(Compression, &str, &[u8]); 4] = [
            (Compression::Gzip, ".gz", &[0x1f, 0x8b, 0x08, 0x00]),
            (Compression::Zstd, ".zst", &[0x28, 0xb5, 0x2f, 0xfd, 0x00]),
            (
                Compression::Xz,
                ".xz",
                &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00],
            ),
            (Compression::Lz4, ".lz4", &[0x04, 0x22, 0x4d, 0x18, 0x64]),
        ];
        for (compression, suffix, magic) in cases {
            assert_eq!(compression.suffix(), suffix);
            assert_eq!(Compression::from_magic(magic), Some(compression));
        }
        assert_eq!(Compression::from_magic(b"\x7fELF\x02\x01"), None);
        assert_eq!(Compression::from_magic(&[0x1f]), None);
        assert_eq!(
            Compression::from_magic(&[0xfd, 0x37, 0x7a, 0x58, 0x5a]),
            None
        );
        assert_eq!(Compression::from_magic(&[]), None);
    }
}
