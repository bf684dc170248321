//! Human output of the client commands: aligned tables, key/value views, times; and `--json`.

use bgagent_client::Task;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write as _;

/// Columns of text, aligned on display width (character count).
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row; control characters (newlines, escapes) become spaces so a row stays one line.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| one_line(&c)).collect());
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines separated by `\n`, columns two spaces apart, no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` on one line: control characters replaced by spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// At most `max` characters of `text` on one line, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    let line = one_line(text);
    if line.chars().count() <= max {
        line
    } else {
        let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// How long ago `at` was, e.g. `4s ago`, `3m ago`, `2h ago`, `5d ago` (`in 10s` for the future).
pub fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds();
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let text = match n {
        0..60 => format!("{n}s"),
        60..3600 => format!("{}m", n / 60),
        3600..86_400 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A timestamp in UTC to the second.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// A duration in seconds, compact: `850ms`, `12.3s`, `4m05s`.
pub fn duration(millis: i64) -> String {
    match millis {
        ..0 => "-".into(),
        0..1000 => format!("{millis}ms"),
        1000..60_000 => format!("{:.1}s", millis as f64 / 1000.0),
        _ => format!("{}m{:02}s", millis / 60_000, (millis / 1000) % 60),
    }
}

/// Print `value` as pretty JSON on stdout: the `--json` output, one document.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Key/value lines with the keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// Everything about one task, one field a line.
pub fn task_detail(task: &Task, now: DateTime<Utc>) -> String {
    let when = |t: Option<DateTime<Utc>>| {
        t.map(|t| format!("{} ({})", timestamp(t), age(t, now)))
            .unwrap_or_else(|| "-".into())
    };
    let or_dash = |v: Option<&str>| v.map(one_line).unwrap_or_else(|| "-".into());
    let mut pairs = vec![
        ("id", task.id.to_string()),
        ("status", status_text(task)),
        ("agent", task.agent.clone()),
        ("command", truncate(&task.command, 200)),
        ("meta", truncate(&task.meta.to_string(), 200)),
        (
            "attempts",
            format!("{}/{}", task.attempts, task.max_attempts),
        ),
        ("timeout", format!("{}s", task.timeout_secs)),
        ("idempotency key", or_dash(task.idempotency_key.as_deref())),
        ("worker", or_dash(task.worker_id.as_deref())),
        ("created", when(Some(task.created_at))),
    ];
    if !task.status.is_terminal() {
        pairs.push(("run at", when(Some(task.run_at))));
    }
    pairs.push(("started", when(task.started_at)));
    pairs.push(("finished", when(task.finished_at)));
    if let Some(result) = &task.result {
        pairs.push(("result", truncate(&result.to_string(), 500)));
    }
    if let Some(error) = &task.last_error {
        pairs.push(("last error", truncate(error, 500)));
    }
    fields(&pairs)
}

/// The status, with `cancel requested` while a running task is being cancelled.
pub fn status_text(task: &Task) -> String {
    if task.cancel_requested && !task.status.is_terminal() {
        format!("{} (cancel requested)", task.status)
    } else {
        task.status.to_string()
    }
}

/// A table of tasks, newest first.
pub fn task_table(tasks: &[Task], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&["ID", "STATUS", "AGENT", "ATTEMPTS", "CREATED", "COMMAND"]);
    for task in tasks {
        table.row(vec![
            task.id.to_string(),
            status_text(task),
            task.agent.clone(),
            format!("{}/{}", task.attempts, task.max_attempts),
            age(task.created_at, now),
            truncate(&task.command, 48),
        ]);
    }
    table
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "NAME", "NOTE"]);
        table.row(vec!["1".into(), "alpha".into(), "x".into()]);
        table.row(vec!["100".into(), "b".into(), String::new()]);
        table.row(vec!["7".into(), "multi\nline".into(), "é".into()]);
        assert_eq!(
            table.render(),
            "ID   NAME        NOTE\n1    alpha       x\n100  b\n7    multi line  é\n"
        );
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(truncate("a\tb", 5), "a b");
    }

    #[test]
    fn ages_and_durations_are_compact() {
        let now = Utc.with_ymd_and_hms(2024, 1, 2, 0, 0, 0).unwrap();
        let ago = |s: i64| age(now - chrono::Duration::seconds(s), now);
        assert_eq!(ago(4), "4s ago");
        assert_eq!(ago(185), "3m ago");
        assert_eq!(ago(7300), "2h ago");
        assert_eq!(ago(86_400 * 3), "3d ago");
        assert_eq!(ago(-10), "in 10s");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(245_000), "4m05s");
    }
}
