//! Plain-text views of what the API answers, for a terminal: what `kessai saga show`
//! and `kessai saga list` print.
//!
//! Every function here is pure: it takes the answer (and, where an age is shown, the
//! current time) and returns the text, so the output can be checked exactly. Times
//! are UTC with millisecond precision; text that came from a participant or a client
//! (reasons, errors, details) has its control characters escaped, so it cannot move
//! the cursor or recolour the terminal.

use crate::types::{SagaPage, SagaSummary, SagaView, TimelineEntry};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

/// How many characters of a reason a list shows.
const LIST_REASON_CHARS: usize = 60;

/// A saga as `kessai saga show` prints it: the header, the branches and the timeline.
/// `now_ms` (Unix ms) dates an unfinished saga: how long it has been running, when its
/// try deadline is.
pub fn saga_view(v: &SagaView, now_ms: i64) -> String {
    let mut out = String::new();
    header(&mut out, v, now_ms);
    out.push('\n');
    branches(&mut out, v, now_ms);
    out.push('\n');
    timeline(&mut out, v);
    out
}

fn header(out: &mut String, v: &SagaView, now_ms: i64) {
    let mut state = clean(&v.state).into_owned();
    if v.stuck {
        state.push_str("  STUCK (confirm/cancel keeps failing; retries continue)");
    }
    let mut fields: Vec<(&str, String)> = vec![
        ("kind", clean(&v.kind).into_owned()),
        ("state", state),
        ("client", opt(v.client.as_deref())),
    ];
    if let Some(key) = &v.idempotency_key {
        fields.push(("key", clean(key).into_owned()));
    }
    fields.push(("created", utc(v.created_at_ms)));
    match v.finished_at_ms {
        Some(f) => {
            fields.push(("finished", utc(f)));
            fields.push(("duration", span(f - v.created_at_ms)));
        }
        None => {
            fields.push(("finished", "- (not yet)".into()));
            fields.push(("duration", format!("{} so far", span(now_ms - v.created_at_ms))));
            if let Some(u) = v.updated_at_ms {
                fields.push(("updated", format!("{} ({} ago)", utc(u), span(now_ms - u))));
            }
            if v.state == "trying"
                && let Some(d) = v.try_deadline_ms
            {
                let when = if d > now_ms {
                    format!("in {}", span(d - now_ms))
                } else {
                    format!("passed {} ago", span(now_ms - d))
                };
                fields.push(("try deadline", format!("{} ({when})", utc(d))));
            }
        }
    }
    if let Some(reason) = &v.reason {
        fields.push(("reason", clean(reason).into_owned()));
    }
    fields.push(("trace id", opt(v.trace_id.as_deref())));
    fields.push(("trace link", opt(v.trace_url.as_deref())));

    let _ = writeln!(out, "saga {}", v.id);
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (label, value) in fields {
        let _ = writeln!(out, "  {:<width$}  {value}", format!("{label}:"));
    }
}

fn branches(out: &mut String, v: &SagaView, now_ms: i64) {
    if v.branches.is_empty() {
        out.push_str("branches: none\n");
        return;
    }
    let _ = writeln!(out, "branches ({}):", v.branches.len());
    let resends = v.finished_at_ms.is_none() && v.branches.iter().any(|b| b.resend_at_ms.is_some());
    let mut head = vec!["#", "PARTICIPANT", "STATE", "SENDS"];
    if resends {
        head.push("NEXT RESEND");
    }
    head.push("LAST ERROR");
    let mut rows = vec![cells(&head)];
    for b in &v.branches {
        let mut row = vec![
            b.branch_id.to_string(),
            clean(&b.participant).into_owned(),
            clean(&b.state).into_owned(),
            // 0 once the branch waits on nothing.
            if b.attempt == 0 {
                "-".into()
            } else {
                b.attempt.to_string()
            },
        ];
        if resends {
            row.push(b.resend_at_ms.map_or_else(
                || "-".into(),
                |at| {
                    if at > now_ms {
                        format!("in {}", span(at - now_ms))
                    } else {
                        "due".into()
                    }
                },
            ));
        }
        row.push(opt(b.last_error.as_deref()));
        rows.push(row);
    }
    table(out, &rows);
}

/// Which command a timeline entry answers or resends: branch, operation, send number.
type Send<'a> = (u32, &'a str, u32);

fn timeline(out: &mut String, v: &SagaView) {
    if v.timeline.is_empty() {
        out.push_str("timeline: empty\n");
        return;
    }
    let _ = writeln!(out, "timeline ({} entries):", v.timeline.len());
    let participant = |branch: u32| {
        v.branches
            .iter()
            .find(|b| b.branch_id == branch)
            .map(|b| b.participant.as_str())
    };
    // Dates only when the timeline leaves the day the saga was created.
    let day = |ms: i64| ms.div_euclid(86_400_000);
    let same_day = v.timeline.iter().all(|e| day(e.at_ms) == day(v.created_at_ms));
    let operators = v.timeline.iter().any(|e| operator(e).is_some());

    let mut head = vec![
        if same_day { "TIME (UTC)" } else { "DATE AND TIME (UTC)" },
        "OFFSET",
        "EVENT",
        "BRANCH",
        "OP",
        "SEND",
        "OUTCOME",
        "SINCE SEND",
    ];
    if operators {
        head.push("OPERATOR");
    }
    head.push("DETAIL");
    let mut rows = vec![cells(&head)];

    // When each command was sent: the tries at submission, the first confirms or
    // cancels at the decision, every later send at its `resent` entry.
    let mut sent: HashMap<Send<'_>, i64> = HashMap::new();
    for e in &v.timeline {
        let mut since_send = String::new();
        match (e.kind.as_str(), e.branch_id, e.operation.as_deref(), e.attempt) {
            ("submitted", _, _, _) => {
                for b in &v.branches {
                    sent.insert((b.branch_id, "try", 1), e.at_ms);
                }
            }
            ("decided", _, Some(op), _) => {
                for b in &v.branches {
                    sent.insert((b.branch_id, op, 1), e.at_ms);
                }
            }
            ("resent", Some(b), Some(op), Some(n)) => {
                if let Some(at) = n.checked_sub(1).and_then(|p| sent.get(&(b, op, p))) {
                    since_send = span(e.at_ms - at);
                }
                sent.insert((b, op, n), e.at_ms);
            }
            // An answer to a command.
            (_, Some(b), Some(op), Some(n)) => {
                if let Some(at) = sent.get(&(b, op, n)) {
                    since_send = span(e.at_ms - at);
                }
            }
            _ => {}
        }
        let time = if same_day {
            clock(e.at_ms)
        } else {
            utc(e.at_ms).trim_end_matches(" UTC").to_owned()
        };
        let branch = match e.branch_id {
            None => "-".to_owned(),
            Some(b) => match participant(b) {
                Some(p) => format!("{b} {}", clean(p)),
                None => b.to_string(),
            },
        };
        let mut row = vec![
            time,
            offset(e.at_ms - v.created_at_ms),
            clean(&e.kind).into_owned(),
            branch,
            opt(e.operation.as_deref()),
            e.attempt.map_or_else(|| "-".into(), |a| a.to_string()),
            opt(e.outcome.as_deref()),
            since_send,
        ];
        if operators {
            row.push(operator(e).unwrap_or("-").to_owned());
        }
        row.push(detail(e, e.branch_id.and_then(participant)));
        rows.push(row);
    }
    table(out, &rows);
}

/// The operator behind an entry (`operator`, or the name of `operator:<name>`).
fn operator(e: &TimelineEntry) -> Option<&str> {
    let actor = e.actor.as_ref()?.as_str();
    if actor == "operator" {
        Some(actor)
    } else {
        actor.strip_prefix("operator:")
    }
}

/// The reason when there is one, else the sentence — unless it only repeats the
/// entry's other columns.
fn detail(e: &TimelineEntry, participant: Option<&str>) -> String {
    if let Some(reason) = &e.reason {
        return clean(reason).into_owned();
    }
    let d = e.detail.as_str();
    let repeats = match (participant, e.operation.as_deref(), e.attempt) {
        (Some(p), Some(op), Some(n)) => d == format!("{p} (send {n})") || d == format!("{op} send {n} to {p}"),
        _ => false,
    } || e.outcome.as_deref() == Some(d);
    if repeats { String::new() } else { clean(d).into_owned() }
}

/// A page of sagas as `kessai saga list` prints it: one line per saga and a count.
/// `now_ms` (Unix ms) gives the age of the unfinished ones.
pub fn saga_page(page: &SagaPage, now_ms: i64) -> String {
    let mut out = String::new();
    if page.sagas.is_empty() {
        out.push_str("no sagas\n");
        return out;
    }
    let mut rows = vec![cells(&[
        "ID",
        "KIND",
        "STATE",
        "CLIENT",
        "CREATED (UTC)",
        "DURATION",
        "REASON",
    ])];
    for s in &page.sagas {
        rows.push(summary_row(s, now_ms));
    }
    table(&mut out, &rows);
    let n = page.sagas.len();
    let _ = writeln!(
        out,
        "{n} saga{}{}",
        if n == 1 { "" } else { "s" },
        if page.next_cursor.is_some() {
            " (more on the next page)"
        } else {
            ""
        }
    );
    out
}

fn summary_row(s: &SagaSummary, now_ms: i64) -> Vec<String> {
    let mut state = clean(&s.state).into_owned();
    if s.stuck {
        state.push_str(" STUCK");
    }
    let duration = match s.finished_at_ms {
        Some(f) => span(f - s.created_at_ms),
        None => format!("running {}", span(now_ms - s.created_at_ms)),
    };
    vec![
        s.id.to_string(),
        clean(&s.kind).into_owned(),
        state,
        opt(s.client.as_deref()),
        utc(s.created_at_ms).trim_end_matches(" UTC").to_owned(),
        duration,
        s.reason
            .as_deref()
            .map_or_else(|| "-".into(), |r| truncate(&clean(r), LIST_REASON_CHARS)),
    ]
}

/// JSON text re-indented the way `serde_json::to_string_pretty` does (two spaces),
/// keeping everything else as it came: the order of the fields, the strings with their
/// escapes, the numbers as written. `text` must be JSON (the client checks it).
pub fn pretty_json(text: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                match chars.peek() {
                    Some(&close @ ('}' | ']')) => {
                        out.push(close);
                        chars.next();
                    }
                    _ => {
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

fn cells(head: &[&str]) -> Vec<String> {
    head.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns two spaces apart, indented by two; the last column unpadded.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            line.push(' ');
            line.push_str(cell);
            if c + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count() + 1));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// `-` for nothing.
fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "-".into(), |s| clean(s).into_owned())
}

/// Control characters (newlines, escape sequences) escaped, so a value stays on its
/// line and cannot drive the terminal.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// At most `max` characters, the last one `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A span of `ms` milliseconds, short: `12ms`, `1.204s`, `2m05.123s`, `3h02m05s`,
/// `2d03h04m`; negative spans (clocks of two coordinators apart) keep their sign.
pub fn span(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let (s, m, h) = (ms / 1000 % 60, ms / 60_000 % 60, ms / 3_600_000 % 24);
    let body = if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else if ms < 3_600_000 {
        format!("{}m{s:02}.{:03}s", ms / 60_000, ms % 1000)
    } else if ms < 86_400_000 {
        format!("{}h{m:02}m{s:02}s", ms / 3_600_000)
    } else {
        format!("{}d{h:02}h{m:02}m", ms / 86_400_000)
    };
    format!("{sign}{body}")
}

/// An offset from a saga's creation: `+0ms`, `+12ms`, `+1.204s` (`-3ms` before it).
pub fn offset(ms: i64) -> String {
    if ms < 0 { span(ms) } else { format!("+{}", span(ms)) }
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
pub fn utc(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02} {} UTC", clock(ms))
}

/// The time of day of Unix ms, UTC: `HH:MM:SS.mmm`.
fn clock(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
