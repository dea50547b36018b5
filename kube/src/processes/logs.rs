//! Logs of supervised processes: their stdout/stderr, line by line with timestamps, in
//! `<data_dir>/logs/<name>/`, rotated by size so a chatty process can never fill the disk.
//!
//! On disk a log directory holds `current.log` (appended to) and `1.log`, `2.log`, ... (older,
//! higher is older). Each line is `<time> <out|err> <text>\n` where `<time>` is RFC 3339 UTC with
//! exactly three fraction digits (`2026-12-03T07:45:01.123Z`), so lines sort and parse by prefix.
//!
//! `<text>` is the process's line decoded lossily as UTF-8, with every control character (Unicode
//! category Cc: C0, DEL and C1) except tab written as Rust's `\u{..}` escape (`\u{1b}`), so that
//! `kube logs` cannot be made to drive the reader's terminal and a stray `\r` cannot hide text.
//! Backslashes are left alone: the escaping is for safety and readability, not reversibility
//! (doubling them would mangle the JSON and Windows paths processes commonly log).

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use time::macros::datetime;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// The longest `<text>` of a logged line, in bytes, before the cut marker.
pub const MAX_LINE: usize = 16 * 1024;

/// Appended to a `<text>` that was cut at `MAX_LINE` bytes.
const CUT_MARKER: &str = " …[cut]";

/// The file being appended to.
const CURRENT: &str = "current.log";

/// Length of the timestamp that starts each line: `2026-12-03T07:45:01.123Z`.
const STAMP_LEN: usize = 24;

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Written as `out`.
    Stdout,
    /// Written as `err`.
    Stderr,
}

impl Stream {
    /// The tag written in each line.
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "out",
            Stream::Stderr => "err",
        }
    }
}

/// Rotation bounds.
#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    /// A file is rotated before a line would take it past this size (a single longer line
    /// still gets a file of its own).
    pub max_file_bytes: u64,
    /// Files kept: `current.log` plus `files - 1` rotated ones. 0 is taken as 1.
    pub files: u32,
}

impl LogLimits {
    /// How many rotated files (`1.log` ...) are kept.
    fn rotated(self) -> u32 {
        self.files.max(1) - 1
    }
}

/// Failures of log files; all are the environment's (disk full, permissions, ...).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file or directory operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done: "create", "open", "write", "list", "read", "remove".
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Shifting a file during rotation failed; the next rotation tries again.
    #[error("cannot rename {from} to {to}: {source}")]
    Rotate {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
}

/// A closure mapping an io::Error to `LogError::Io` for `what` on `path`.
fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Appends lines to `<dir>/current.log`, rotating before a line would take it past
/// `max_file_bytes`: current.log -> 1.log, 1.log -> 2.log, ..., the oldest beyond `files - 1`
/// deleted. So the directory never holds more than files * (max_file_bytes + one line) bytes.
pub struct LogWriter {
    dir: PathBuf,
    /// `<dir>/current.log`, kept to name it in errors without an allocation per line.
    current: PathBuf,
    limits: LogLimits,
    file: BufWriter<File>,
    /// Size of current.log including what is still buffered.
    size: u64,
}

impl LogWriter {
    /// Creates `dir` (mode 0700) if needed and opens current.log for append (0600); counts its size.
    /// Rotated files beyond `limits.files - 1`, left by a run with a larger limit, are removed so
    /// the bound holds from the start.
    pub fn open(dir: &Path, limits: LogLimits) -> Result<LogWriter, LogError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            let stale = entry
                .file_name()
                .to_str()
                .and_then(rotated_number)
                .is_some_and(|n| n > limits.rotated());
            if stale {
                let path = entry.path();
                remove_if_present(&path)?;
            }
        }
        let path = dir.join(CURRENT);
        let file = open_append(&path)?;
        let size = file.metadata().map_err(io_err("open", &path))?.len();
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            current: path,
            limits,
            file: BufWriter::new(file),
            size,
        })
    }

    /// One line: "<RFC 3339 UTC time with milliseconds> <out|err> <text>\n", `text` being the
    /// line without its newline, escaped and cut as the module documentation says. `unix_ms` is
    /// the time (passed in, so tests are deterministic).
    pub fn line(&mut self, stream: Stream, unix_ms: u64, text: &[u8]) -> Result<(), LogError> {
        let line = format_line(stream, unix_ms, text);
        let len = line.len() as u64;
        // An empty file takes the line whatever its size, or an oversized line would rotate forever.
        if self.size > 0 && self.size.saturating_add(len) > self.limits.max_file_bytes {
            self.rotate()?;
        }
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err("write", &self.current))?;
        self.size += len;
        Ok(())
    }

    /// Writes out what is buffered; the driver calls it after each burst.
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.file.flush().map_err(io_err("write", &self.current))
    }

    /// Shifts every file up by one, dropping the oldest, and starts an empty current.log.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.flush()?;
        let kept = self.limits.rotated();
        if kept == 0 {
            remove_if_present(&self.current)?;
        } else {
            // rename(2) replaces its target, so the oldest kept file is dropped by the first
            // rename and the directory never holds more than `files` files.
            for n in (1..kept).rev() {
                rename_if_present(
                    &self.dir.join(format!("{n}.log")),
                    &self.dir.join(format!("{}.log", n + 1)),
                )?;
            }
            rename_if_present(&self.current, &self.dir.join("1.log"))?;
        }
        // Until this succeeds the old handle stays, writing into the renamed file: a retry on the
        // next line is better than losing the writer.
        self.file = BufWriter::new(open_append(&self.current)?);
        self.size = 0;
        Ok(())
    }
}

/// Opens `path` for append, creating it readable by its owner only: logs may hold secrets.
fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open", path))
}

/// Removes `path`; one already gone is fine (a reader or an earlier failed rotation).
fn remove_if_present(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Renames `from` to `to`; a missing `from` (fewer files than the limit yet) is fine.
fn rename_if_present(from: &Path, to: &Path) -> Result<(), LogError> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LogError::Rotate {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `n` for a rotated file's name `<n>.log` (n >= 1, plain decimal), else None.
fn rotated_number(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".log")?;
    // u32::from_str takes "+1" and "01" too; only the names we write count, so no file is read twice.
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n >= 1)
}

/// A whole log line, newline included.
fn format_line(stream: Stream, unix_ms: u64, text: &[u8]) -> String {
    let text = sanitize(text);
    let mut line = String::with_capacity(STAMP_LEN + 6 + text.len());
    line.push_str(&format_stamp(unix_ms));
    line.push(' ');
    line.push_str(stream.tag());
    line.push(' ');
    line.push_str(&text);
    line.push('\n');
    line
}

/// `unix_ms` as `2026-12-03T07:45:01.123Z`. Written by hand from `time`'s calendar fields rather
/// than with `Rfc3339`, which trims trailing fraction zeros (we want a fixed width) and needs a
/// feature kube does not enable. Times past year 9999 (a broken clock) show as its last instant.
fn format_stamp(unix_ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(datetime!(9999-12-31 23:59:59.999 UTC));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The unix time in ms of the timestamp starting `line`, if it is one `format_stamp` writes.
pub fn parse_stamp(line: &str) -> Option<u64> {
    let s = line.as_bytes().get(..STAMP_LEN)?;
    let seps = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ];
    if seps.iter().any(|&(i, c)| s[i] != c) {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u16> {
        s[from..to].iter().try_fold(0u16, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u16::from(b - b'0'))
        })
    };
    let narrow = |v: u16| u8::try_from(v).ok();
    let date = Date::from_calendar_date(
        i32::from(num(0, 4)?),
        Month::try_from(narrow(num(5, 7)?)?).ok()?,
        narrow(num(8, 10)?)?,
    )
    .ok()?;
    let time = Time::from_hms_milli(
        narrow(num(11, 13)?)?,
        narrow(num(14, 16)?)?,
        narrow(num(17, 19)?)?,
        num(20, 23)?,
    )
    .ok()?;
    let nanos = PrimitiveDateTime::new(date, time)
        .assume_utc()
        .unix_timestamp_nanos();
    u64::try_from(nanos / 1_000_000).ok()
}

/// The `<text>` of a line: lossy UTF-8, control characters but tab escaped, at most `MAX_LINE`
/// bytes (never ending inside an escape or a character) followed by `CUT_MARKER` if cut.
fn sanitize(text: &[u8]) -> String {
    // Escapes and U+FFFD never shrink the text, so bytes past MAX_LINE would be cut anyway;
    // dropping them first bounds the work.
    let over = text.len() > MAX_LINE;
    let text = &text[..text.len().min(MAX_LINE)];
    let mut out = String::with_capacity(text.len());
    let mut cut = over;
    let mut chunks = text.utf8_chunks().peekable();
    'chunks: while let Some(chunk) = chunks.next() {
        for c in chunk.valid().chars() {
            if !push_escaped(&mut out, c) {
                cut = true;
                break 'chunks;
            }
        }
        // Invalid bytes at the very end of a text cut above are most likely a character split by
        // that cut, not garbage from the process; the marker already says something is missing.
        let split_by_cut = over && chunks.peek().is_none();
        if !chunk.invalid().is_empty() && !split_by_cut && !push_escaped(&mut out, '\u{FFFD}') {
            cut = true;
            break;
        }
    }
    if cut {
        out.push_str(CUT_MARKER);
    }
    out
}

/// Appends `c` (escaped if a control character other than tab) unless that would take `out`
/// past `MAX_LINE` bytes; says whether it did.
fn push_escaped(out: &mut String, c: char) -> bool {
    if c.is_control() && c != '\t' {
        let escaped = c.escape_unicode();
        // The escape is ASCII: its length in chars is its length in bytes.
        if out.len() + escaped.len() > MAX_LINE {
            return false;
        }
        out.extend(escaped);
    } else {
        if out.len() + c.len_utf8() > MAX_LINE {
            return false;
        }
        out.push(c);
    }
    true
}

/// Splits a byte stream into lines with bounded memory: pushes return complete lines (without
/// '\n', a trailing '\r' removed); a line longer than `max` is returned in pieces of `max` bytes
/// (so a process writing no newline cannot grow the buffer). `finish` returns the last partial line.
pub struct LineSplitter {
    /// The line so far; never longer than `max`, its capacity allocated once.
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter cutting lines into pieces of at most `max` bytes (0 is taken as 1, since empty
    /// pieces would never consume anything). Allocates `max` bytes up front.
    pub fn new(max: usize) -> LineSplitter {
        let max = max.max(1);
        LineSplitter {
            buf: Vec::with_capacity(max),
            max,
        }
    }

    /// Takes the next bytes of the stream; returns the lines (or `max`-byte pieces) they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.extend(&rest[..i], &mut out);
            let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf).to_vec();
            out.push(line);
            self.buf.clear();
            rest = &rest[i + 1..];
        }
        self.extend(rest, &mut out);
        out
    }

    /// The last line if the stream ended without a newline (kept as is, a final '\r' included).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.buf.is_empty() {
            return None;
        }
        let line = self.buf.to_vec();
        self.buf.clear();
        Some(line)
    }

    /// Appends bytes holding no newline, emitting a full buffer as a piece only when more bytes
    /// come: a line of exactly `max` bytes then '\n' is one line, not a piece and an empty line.
    fn extend(&mut self, mut bytes: &[u8], out: &mut Vec<Vec<u8>>) {
        while !bytes.is_empty() {
            if self.buf.len() == self.max {
                // Copied out, not taken, so `buf` keeps its capacity and never reallocates.
                out.push(self.buf.to_vec());
                self.buf.clear();
            }
            let n = (self.max - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }
}

/// The lines of `dir`, oldest first across rotated files (highest number first, current.log
/// last), those at or after `since_unix_ms` when given (lines whose timestamp does not parse are
/// kept), at most the last `max_lines`. A missing dir is an empty result.
///
/// Best effort against a concurrent writer: every file is opened before any is read, so a
/// rotation can only disturb the few microseconds of opening, not the reading.
pub fn read(
    dir: &Path,
    since_unix_ms: Option<u64>,
    max_lines: usize,
) -> Result<Vec<String>, LogError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    if max_lines == 0 {
        return Ok(Vec::new());
    }
    let mut rotated = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(rotated_number) {
            rotated.push(n);
        }
    }
    rotated.sort_unstable_by(|a, b| b.cmp(a));
    let paths = rotated
        .iter()
        .map(|n| dir.join(format!("{n}.log")))
        .chain(std::iter::once(dir.join(CURRENT)));
    let mut files = Vec::new();
    for path in paths {
        match File::open(&path) {
            Ok(file) => files.push((path, file)),
            // Rotated away since the listing, or current.log not created yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("open", &path)(e)),
        }
    }
    let mut kept = VecDeque::new();
    let mut buf = Vec::new();
    for (path, file) in files {
        let mut reader = BufReader::new(file);
        loop {
            buf.clear();
            if reader
                .read_until(b'\n', &mut buf)
                .map_err(io_err("read", &path))?
                == 0
            {
                break;
            }
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let line = String::from_utf8_lossy(line).into_owned();
            let before = match (since_unix_ms, parse_stamp(&line)) {
                (Some(since), Some(at)) => at < since,
                _ => false,
            };
            if before {
                continue;
            }
            if kept.len() == max_lines {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    }
    Ok(kept.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// 2026-12-03T07:45:01.123Z.
    const T: u64 = 1_796_283_901_123;

    fn text_of(line: &str) -> &str {
        // "<stamp> out " precedes the text.
        &line[STAMP_LEN + 5..]
    }

    fn logged(text: &[u8]) -> String {
        format_line(Stream::Stdout, T, text)
    }

    fn dir_files(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_line_is_stamp_stream_and_text() {
        assert_eq!(
            format_line(Stream::Stdout, T, b"hello world"),
            "2026-12-03T07:45:01.123Z out hello world\n"
        );
        assert_eq!(
            format_line(Stream::Stderr, 0, b""),
            "1970-01-01T00:00:00.000Z err \n"
        );
        assert_eq!(format_stamp(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn stamps_parse_back_and_garbage_does_not() {
        for ms in [0, 1, 999, T, 253_402_300_799_999] {
            assert_eq!(parse_stamp(&format_stamp(ms)), Some(ms));
        }
        assert_eq!(parse_stamp(&format_line(Stream::Stdout, T, b"x")), Some(T));
        for bad in [
            "",
            "not a stamp",
            "2026-12-03T07:45:01.123",
            "2026-13-03T07:45:01.123Z",
            "2026-02-30T07:45:01.123Z",
            "2026-12-03T24:45:01.123Z",
            "2026-12-03 07:45:01.123Z",
            "+026-12-03T07:45:01.123Z",
            "2026-12-03T07:45:01.1é3Z",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn control_characters_but_tab_are_escaped() {
        let line = logged(b"a\tb\x1b[31mc\rd\x7fe\x00\xff\xc2\x85\\u{1b}");
        assert_eq!(
            text_of(&line),
            "a\tb\\u{1b}[31mc\\u{d}d\\u{7f}e\\u{0}\u{fffd}\\u{85}\\u{1b}\n"
        );
    }

    #[test]
    fn an_overlong_line_is_cut_with_a_marker() {
        let line = logged(&[b'a'; MAX_LINE + 100]);
        assert_eq!(
            text_of(&line),
            format!("{}{CUT_MARKER}\n", "a".repeat(MAX_LINE))
        );

        // Exactly MAX_LINE bytes are not cut.
        let line = logged(&[b'a'; MAX_LINE]);
        assert_eq!(text_of(&line), format!("{}\n", "a".repeat(MAX_LINE)));

        // Escapes grow the text; the cut never splits one.
        let line = logged(&[1u8; MAX_LINE / 2]);
        let text = text_of(&line).strip_suffix('\n').unwrap();
        let kept = text.strip_suffix(CUT_MARKER).unwrap();
        assert!(kept.len() <= MAX_LINE && kept.len() > MAX_LINE - 5);
        assert_eq!(kept, "\\u{1}".repeat(kept.len() / 5));

        // Nor a character, and a character split by the byte cut is not shown as U+FFFD.
        let mut text = vec![b'a'];
        text.extend("é".repeat(MAX_LINE).as_bytes());
        let line = logged(&text);
        let kept = text_of(&line)
            .strip_suffix(&format!("{CUT_MARKER}\n"))
            .unwrap();
        assert_eq!(kept, format!("a{}", "é".repeat((MAX_LINE - 1) / 2)));
    }

    #[test]
    fn open_makes_private_dir_and_file_and_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs/demo");
        let limits = LogLimits {
            max_file_bytes: 1 << 20,
            files: 3,
        };
        let mut w = LogWriter::open(&dir, limits).unwrap();
        w.line(Stream::Stdout, T, b"one").unwrap();
        w.flush().unwrap();
        drop(w);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CURRENT)), 0o600);

        let mut w = LogWriter::open(&dir, limits).unwrap();
        assert_eq!(w.size, logged(b"one").len() as u64);
        w.line(Stream::Stderr, T + 1, b"two").unwrap();
        w.flush().unwrap();
        let all = read(&dir, None, 10).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].ends_with(" out one") && all[1].ends_with(" err two"));
    }

    #[test]
    fn open_drops_rotated_files_beyond_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["1.log", "2.log", "3.log", "07.log", "notes.txt"] {
            fs::write(tmp.path().join(name), "x\n").unwrap();
        }
        LogWriter::open(
            tmp.path(),
            LogLimits {
                max_file_bytes: 100,
                files: 2,
            },
        )
        .unwrap();
        let names: Vec<_> = dir_files(tmp.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["07.log", "1.log", "current.log", "notes.txt"]);
    }

    #[test]
    fn rotation_bounds_files_and_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = LogLimits {
            max_file_bytes: 4096,
            files: 3,
        };
        let mut w = LogWriter::open(tmp.path(), limits).unwrap();
        let mut longest = 0u64;
        for i in 0..10_000u64 {
            // Lengths vary so rotation does not always fall on the same boundary.
            let text = "x".repeat((i % 200) as usize);
            longest = longest.max(logged(text.as_bytes()).len() as u64);
            w.line(Stream::Stdout, T + i, text.as_bytes()).unwrap();
            w.flush().unwrap();
            if i % 10 == 0 || i > 9_990 {
                let files = dir_files(tmp.path());
                assert!(files.len() <= 3, "{files:?}");
                let total: u64 = files.iter().map(|(_, len)| len).sum();
                assert!(total <= 3 * (4096 + longest), "{total}");
                assert!(files.iter().all(|(_, len)| *len <= 4096), "{files:?}");
            }
        }
        let names: Vec<_> = dir_files(tmp.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["1.log", "2.log", "current.log"]);
    }

    #[test]
    fn a_line_longer_than_a_file_gets_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(
            tmp.path(),
            LogLimits {
                max_file_bytes: 10,
                files: 1,
            },
        )
        .unwrap();
        for i in 0..5 {
            w.line(Stream::Stdout, T + i, b"longer than ten bytes")
                .unwrap();
        }
        w.flush().unwrap();
        let files = dir_files(tmp.path());
        assert_eq!(files.len(), 1);
        assert_eq!(
            read(tmp.path(), None, 10).unwrap(),
            [format!("{} out longer than ten bytes", format_stamp(T + 4))]
        );
    }

    #[test]
    fn read_orders_across_files_and_honours_since_and_max_lines() {
        let tmp = tempfile::tempdir().unwrap();
        // Each line is 37 bytes: two fit in 100, so six survive in three files.
        let limits = LogLimits {
            max_file_bytes: 100,
            files: 3,
        };
        let mut w = LogWriter::open(tmp.path(), limits).unwrap();
        for i in 0..20u64 {
            w.line(
                Stream::Stdout,
                T + i * 1000,
                format!("line {i:02}").as_bytes(),
            )
            .unwrap();
        }
        w.flush().unwrap();
        let line = |i: u64| format!("{} out line {i:02}", format_stamp(T + i * 1000));

        assert_eq!(
            read(tmp.path(), None, 100).unwrap(),
            (14..20).map(line).collect::<Vec<_>>()
        );
        assert_eq!(
            read(tmp.path(), None, 3).unwrap(),
            (17..20).map(line).collect::<Vec<_>>()
        );
        assert_eq!(read(tmp.path(), None, 0).unwrap(), Vec::<String>::new());
        let since = Some(T + 16 * 1000);
        assert_eq!(
            read(tmp.path(), since, 100).unwrap(),
            (16..20).map(line).collect::<Vec<_>>()
        );
        assert_eq!(
            read(tmp.path(), Some(T + 16 * 1000 - 1), 2).unwrap(),
            [line(18), line(19)]
        );
        assert_eq!(
            read(tmp.path(), Some(u64::MAX), 100).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn read_keeps_unparsable_lines_and_tolerates_a_missing_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            read(&tmp.path().join("nope"), None, 10).unwrap(),
            Vec::<String>::new()
        );
        let old = format!("{} out old", format_stamp(T));
        let new = format!("{} err new", format_stamp(T + 10));
        fs::write(tmp.path().join("1.log"), format!("{old}\ngarbage\n")).unwrap();
        let mut current = format!("{new}\npartial ").into_bytes();
        current.push(0xc3);
        fs::write(tmp.path().join(CURRENT), current).unwrap();
        assert_eq!(
            read(tmp.path(), Some(T + 5), 10).unwrap(),
            ["garbage", new.as_str(), "partial \u{fffd}"]
        );
    }

    #[test]
    fn splitter_joins_chunks_and_strips_crlf() {
        let mut s = LineSplitter::new(64);
        assert!(s.push(b"hel").is_empty());
        assert_eq!(s.push(b"lo\nwor"), [b"hello".to_vec()]);
        assert_eq!(s.push(b"ld\n\na\r"), [b"world".to_vec(), b"".to_vec()]);
        // A CRLF split across pushes, and a '\r' inside a line kept.
        assert_eq!(s.push(b"\nb\rc\r\n"), [b"a".to_vec(), b"b\rc".to_vec()]);
        assert_eq!(s.finish(), None);
        assert!(s.push(b"tail\r").is_empty());
        assert_eq!(s.finish(), Some(b"tail\r".to_vec()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_cuts_a_line_without_newline_into_pieces() {
        let max = MAX_LINE;
        let mut s = LineSplitter::new(max);
        let capacity = s.buf.capacity();
        let mut pieces = Vec::new();
        for _ in 0..256 {
            pieces.extend(s.push(&[b'x'; 4096]));
            assert!(s.buf.len() <= max);
            assert_eq!(s.buf.capacity(), capacity);
        }
        pieces.extend(s.finish());
        assert_eq!(pieces.len(), (1 << 20) / max);
        assert!(
            pieces
                .iter()
                .all(|p| p.len() == max && p.iter().all(|&b| b == b'x'))
        );

        // A line of exactly max bytes is one line, not a piece and an empty line.
        let mut s = LineSplitter::new(4);
        assert_eq!(
            s.push(b"abcd\nabcdef\n"),
            [b"abcd".to_vec(), b"abcd".to_vec(), b"ef".to_vec()]
        );
        let mut zero = LineSplitter::new(0);
        assert_eq!(zero.push(b"ab"), [b"a".to_vec()]);
        assert_eq!(zero.finish(), Some(b"b".to_vec()));
    }
}
