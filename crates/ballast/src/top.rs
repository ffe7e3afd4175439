//! `ballast top`: a live view of a running daemon, as `xentop` is of a Xen host: the
//! host's memory at the top, one row per VM below, refreshed every interval.
//!
//! What is shown (the rows, their order, the header's figures) is worked out by plain
//! functions on the API's types, tested without a terminal; the terminal side only draws
//! them and reads keys.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ballast_daemon::api::types::{HostInfo, VmInfo, VmState};
use ballast_daemon::client::Client;
use ballast_daemon::link::GuestKind;
use ballast_sim::size::format_size;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Padding, Paragraph, Row, Table, TableState};

/// The columns, in order.
pub const COLUMNS: [&str; 13] = [
    "NAME",
    "KIND",
    "STATE",
    "ASSIGNED",
    "TARGET",
    "COMMITTED",
    "PRESS",
    "BALLOONED",
    "RSS",
    "MIN",
    "MAX",
    "STUCK",
    "VIOL",
];

/// Marks a target fixed with `mem-set` (the balancer does not move it).
pub const FIXED_MARK: char = '*';

/// Columns left out, in this order, while the table does not fit the terminal: the
/// settings first (they change only by hand), then the counters; the name, the state
/// and the memory a VM holds, is headed for and uses stay.
const DROP_ORDER: [usize; 7] = [9, 10, 12, 11, 7, 1, 5];

/// Each column's width: the name's from the longest name; "1023.99 MiB" is the widest
/// size, and the target has room for its mark.
pub fn column_widths(name: u16) -> [u16; 13] {
    [name, 4, 7, 11, 12, 11, 5, 11, 11, 11, 11, 6, 4]
}

/// The columns shown in `available` cells (one between columns), in order; `keep` (the
/// sort column) is never left out.
pub fn visible_columns(widths: &[u16; 13], available: u16, keep: usize) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..COLUMNS.len()).collect();
    let need = |shown: &[usize]| -> u32 {
        shown.iter().map(|&i| u32::from(widths[i])).sum::<u32>() + shown.len() as u32 - 1
    };
    for d in DROP_ORDER {
        if need(&shown) <= u32::from(available) {
            break;
        }
        if d != keep {
            shown.retain(|&i| i != d);
        }
    }
    shown
}

/// How long one refresh may take before it counts as failed: a daemon that accepts but
/// does not answer must not freeze the view's figures silently.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A column the table can be sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Kind,
    State,
    Assigned,
    Target,
    Committed,
    Pressure,
    Ballooned,
    Resident,
    Violations,
}

impl SortKey {
    /// The order `s` walks through.
    pub const ALL: [SortKey; 10] = [
        SortKey::Name,
        SortKey::Kind,
        SortKey::State,
        SortKey::Assigned,
        SortKey::Target,
        SortKey::Committed,
        SortKey::Pressure,
        SortKey::Ballooned,
        SortKey::Resident,
        SortKey::Violations,
    ];

    fn position(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// The next column (`s`), wrapping round.
    pub fn next(self) -> SortKey {
        Self::ALL[(self.position() + 1) % Self::ALL.len()]
    }

    /// The previous column (`S`), wrapping round.
    pub fn prev(self) -> SortKey {
        Self::ALL[(self.position() + Self::ALL.len() - 1) % Self::ALL.len()]
    }

    /// Its column in [`COLUMNS`].
    pub fn column(self) -> usize {
        match self {
            SortKey::Name => 0,
            SortKey::Kind => 1,
            SortKey::State => 2,
            SortKey::Assigned => 3,
            SortKey::Target => 4,
            SortKey::Committed => 5,
            SortKey::Pressure => 6,
            SortKey::Ballooned => 7,
            SortKey::Resident => 8,
            SortKey::Violations => 12,
        }
    }

    /// Text columns read best A to Z; figures largest first, as `top` shows the busiest
    /// at the top.
    pub fn descending(self) -> bool {
        !matches!(self, SortKey::Name | SortKey::Kind | SortKey::State)
    }
}

fn kind(k: GuestKind) -> &'static str {
    match k {
        GuestKind::Dm => "dm",
        GuestKind::Xen => "xen",
    }
}

fn state(s: VmState) -> &'static str {
    match s {
        VmState::Running => "running",
        VmState::Stopped => "stopped",
    }
}

fn running(v: &VmInfo) -> bool {
    v.state == VmState::Running
}

/// Sorts by `key` in its natural direction (flipped by `reverse`); ties go by name, so
/// rows with equal figures keep still from one refresh to the next.
pub fn sort_vms(vms: &mut [VmInfo], key: SortKey, reverse: bool) {
    use std::cmp::Ordering as O;
    let by = |a: &VmInfo, b: &VmInfo| -> O {
        match key {
            SortKey::Name => a.name.cmp(&b.name),
            SortKey::Kind => kind(a.kind).cmp(kind(b.kind)),
            // Running first: the rows that move.
            SortKey::State => running(b).cmp(&running(a)),
            SortKey::Assigned => a.assigned.cmp(&b.assigned),
            SortKey::Target => a.target.cmp(&b.target),
            SortKey::Committed => a.committed.cmp(&b.committed),
            SortKey::Pressure => a
                .pressure
                .unwrap_or(-1.0)
                .total_cmp(&b.pressure.unwrap_or(-1.0)),
            SortKey::Ballooned => a.ballooned.cmp(&b.ballooned),
            SortKey::Resident => a.resident.cmp(&b.resident),
            SortKey::Violations => a.violations.cmp(&b.violations),
        }
    };
    vms.sort_by(|a, b| {
        let mut o = by(a, b);
        if key.descending() {
            o = o.reverse();
        }
        if reverse {
            o = o.reverse();
        }
        o.then_with(|| a.name.cmp(&b.name))
    });
}

fn opt_size(b: Option<u64>) -> String {
    b.map(format_size).unwrap_or_else(|| "-".into())
}

/// One VM's cells, in [`COLUMNS`]' order. A stopped VM holds nothing, so its live
/// figures are dashes rather than zeros that read like measurements.
pub fn row_cells(v: &VmInfo) -> [String; 13] {
    let live = running(v);
    let live_size = |b: u64| if live { format_size(b) } else { "-".into() };
    // A stopped VM has no target of the host's, only the operator's, which it gets when
    // its guest attaches.
    let target = match (live, v.pinned_target) {
        (true, None) => format_size(v.target),
        (true, Some(_)) => format!("{}{FIXED_MARK}", format_size(v.target)),
        (false, Some(p)) => format!("{}{FIXED_MARK}", format_size(p)),
        (false, None) => "-".into(),
    };
    [
        v.name.clone(),
        kind(v.kind).into(),
        state(v.state).into(),
        live_size(v.assigned),
        target,
        opt_size(v.committed),
        v.pressure
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_else(|| "-".into()),
        live_size(v.ballooned),
        opt_size(v.resident),
        format_size(v.settings.minimum),
        format_size(v.settings.maximum),
        if v.unresponsive {
            "unresp".into()
        } else if v.stuck {
            "stuck".into()
        } else {
            "-".into()
        },
        v.violations.to_string(),
    ]
}

/// Seconds as `3d 04:05:06` or `04:05:06`.
pub fn uptime(s: f64) -> String {
    let s = if s.is_finite() && s > 0.0 {
        s as u64
    } else {
        0
    };
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// The header's two lines of text.
pub fn host_lines(h: &HostInfo) -> [String; 2] {
    [
        format!(
            "policy {}   VMs {} running / {} defined   up {}   daemon {}",
            h.policy,
            h.running,
            h.vms,
            uptime(h.uptime_s),
            h.version
        ),
        format!(
            "memory {}   free {}   resident {}   pools {}   reserve {}",
            format_size(h.memory_bytes),
            format_size(h.free_bytes),
            format_size(h.resident_bytes),
            format_size(h.pools_bytes),
            format_size(h.reserve_bytes),
        ),
    ]
}

/// Used managed memory (everything not free: the VMs' and the pools') as a fraction, and
/// the gauge's label.
pub fn used(h: &HostInfo) -> (f64, String) {
    let used = h.memory_bytes.saturating_sub(h.free_bytes);
    let ratio = if h.memory_bytes == 0 {
        0.0
    } else {
        (used as f64 / h.memory_bytes as f64).clamp(0.0, 1.0)
    };
    (
        ratio,
        format!(
            "used {} of {} ({:.0}%)",
            format_size(used),
            format_size(h.memory_bytes),
            ratio * 100.0
        ),
    )
}

/// One refresh's answer.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The host.
    pub host: HostInfo,
    /// The VMs.
    pub vms: Vec<VmInfo>,
}

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Redraw.
    Redraw,
    /// Leave.
    Quit,
}

/// The view's state: the last answer, the last error, the order and the selection.
#[derive(Debug)]
pub struct App {
    socket: PathBuf,
    interval: Duration,
    /// The sort column.
    pub sort: SortKey,
    /// Flips the sort column's direction.
    pub reverse: bool,
    /// The last good answer; kept while the daemon is away, so the last figures stay.
    pub last: Option<Snapshot>,
    /// Why the last refresh failed, and since when refreshes fail.
    pub error: Option<(String, Instant)>,
    table: TableState,
}

impl App {
    /// A view of the daemon at `socket`, refreshed every `interval`.
    pub fn new(socket: &Path, interval: Duration) -> App {
        App {
            socket: socket.to_path_buf(),
            interval,
            sort: SortKey::Name,
            reverse: false,
            last: None,
            error: None,
            table: TableState::default(),
        }
    }

    /// Takes one refresh's outcome.
    pub fn update(&mut self, r: Result<Snapshot, String>) {
        match r {
            Ok(s) => {
                self.last = Some(s);
                self.error = None;
            }
            Err(e) => {
                let since = self.error.as_ref().map_or_else(Instant::now, |(_, t)| *t);
                self.error = Some((e, since));
            }
        }
    }

    /// The rows in display order.
    pub fn sorted(&self) -> Vec<VmInfo> {
        let mut vms = self
            .last
            .as_ref()
            .map(|s| s.vms.clone())
            .unwrap_or_default();
        sort_vms(&mut vms, self.sort, self.reverse);
        vms
    }

    /// Handles a key.
    pub fn on_key(&mut self, k: KeyEvent) -> Action {
        if k.kind != KeyEventKind::Press {
            return Action::None;
        }
        // Raw mode turns Ctrl-C into a key rather than SIGINT.
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('c') if ctrl => Action::Quit,
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Action::Quit,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Action::Redraw
            }
            KeyCode::Char('S') => {
                self.sort = self.sort.prev();
                Action::Redraw
            }
            KeyCode::Char('r') => {
                self.reverse = !self.reverse;
                Action::Redraw
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.table.select_next();
                Action::Redraw
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.table.select_previous();
                Action::Redraw
            }
            KeyCode::Home => {
                self.table.select_first();
                Action::Redraw
            }
            KeyCode::End => {
                self.table.select_last();
                Action::Redraw
            }
            _ => Action::None,
        }
    }

    /// The sort indicator, as the table's title shows it.
    pub fn sort_label(&self) -> String {
        let down = self.sort.descending() != self.reverse;
        format!(
            "sort {} {}",
            COLUMNS[self.sort.column()],
            if down { '▼' } else { '▲' }
        )
    }

    /// Draws the whole screen.
    pub fn render(&mut self, f: &mut Frame) {
        let [head, table, status, keys] = Layout::vertical([
            Constraint::Length(5),
            Constraint::Min(3),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        self.render_head(f, head);
        self.render_table(f, table);
        f.render_widget(self.status(), status);
        f.render_widget(
            Paragraph::new(Line::from(vec![
                key("q"),
                Span::raw(" quit  "),
                key("s"),
                Span::raw("/"),
                key("S"),
                Span::raw(" sort column  "),
                key("r"),
                Span::raw(" reverse  "),
                key("↑↓"),
                Span::raw(" select  "),
                Span::styled(
                    format!("{FIXED_MARK} target fixed by mem-set"),
                    Style::new().add_modifier(Modifier::DIM),
                ),
            ])),
            keys,
        );
    }

    fn render_head(&self, f: &mut Frame, area: Rect) {
        let block = Block::default()
            .borders(Borders::ALL)
            .padding(Padding::horizontal(1))
            .title(" ballast top ")
            .title(Line::from(format!(" {} ", self.socket.display())).right_aligned());
        let inner = block.inner(area);
        f.render_widget(block, area);
        let [l1, l2, gauge] = Layout::vertical([Constraint::Length(1); 3]).areas(inner);
        let Some(s) = &self.last else {
            f.render_widget(Paragraph::new("waiting for the daemon..."), l1);
            return;
        };
        let [a, b] = host_lines(&s.host);
        f.render_widget(Paragraph::new(a), l1);
        f.render_widget(Paragraph::new(b), l2);
        let (ratio, label) = used(&s.host);
        let color = if ratio > 0.9 {
            Color::Red
        } else if ratio > 0.75 {
            Color::Yellow
        } else {
            Color::Green
        };
        f.render_widget(
            Gauge::default()
                .ratio(ratio)
                .label(label)
                .gauge_style(Style::new().fg(color).bg(Color::DarkGray)),
            gauge,
        );
    }

    fn render_table(&mut self, f: &mut Frame, area: Rect) {
        let vms = self.sorted();
        let sorted_col = self.sort.column();
        let name_w = vms
            .iter()
            .map(|v| v.name.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(4, 32) as u16;
        let widths = column_widths(name_w);
        // Inside the borders and the padding.
        let shown = visible_columns(&widths, area.width.saturating_sub(4), sorted_col);
        // Figures align right, as in `ballast list`; the first three are words.
        let cell = |i: usize, s: String| {
            let line = Line::from(s);
            Cell::from(if i < 3 { line } else { line.right_aligned() })
        };
        let header = Row::new(shown.iter().map(|&i| {
            let c = cell(i, COLUMNS[i].to_string());
            if i == sorted_col {
                c.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                c
            }
        }))
        .style(Style::new().add_modifier(Modifier::BOLD));
        let rows = vms.iter().map(|v| {
            let style = if v.unresponsive || v.stuck {
                Style::new().fg(Color::Red)
            } else if running(v) {
                Style::new()
            } else {
                Style::new().add_modifier(Modifier::DIM)
            };
            let cells = row_cells(v);
            Row::new(shown.iter().map(|&i| cell(i, cells[i].clone()))).style(style)
        });
        let widths: Vec<Constraint> = shown
            .iter()
            .map(|&i| Constraint::Length(widths[i]))
            .collect();
        let title = match (&self.error, &self.last) {
            (Some(_), Some(_)) => format!(" VMs ({}), the last figures received ", vms.len()),
            _ => format!(" VMs ({}) ", vms.len()),
        };
        let table = Table::new(rows, widths)
            .header(header)
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .padding(Padding::horizontal(1))
                    .title(title)
                    .title(Line::from(format!(" {} ", self.sort_label())).right_aligned()),
            )
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        f.render_stateful_widget(table, area, &mut self.table);
    }

    fn status(&self) -> Paragraph<'static> {
        match &self.error {
            // The retry comes first: a long error is cut at the screen's edge.
            Some((e, since)) => Paragraph::new(format!(
                "error (for {:.0} s, retrying every {}): {e}",
                since.elapsed().as_secs_f64(),
                secs(self.interval),
            ))
            .style(Style::new().fg(Color::White).bg(Color::Red)),
            None => Paragraph::new(format!("refreshing every {}", secs(self.interval)))
                .style(Style::new().add_modifier(Modifier::DIM)),
        }
    }
}

fn key(k: &str) -> Span<'static> {
    Span::styled(k.to_string(), Style::new().add_modifier(Modifier::BOLD))
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

async fn fetch(c: &Client) -> Result<Snapshot, String> {
    let work = async {
        let host = c.host().await.map_err(|e| e.to_string())?;
        let vms = c.list().await.map_err(|e| e.to_string())?;
        Ok(Snapshot { host, vms })
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the daemon did not answer within {} s",
                FETCH_TIMEOUT.as_secs()
            ))
        })
}

/// Puts the terminal back (raw mode off, the main screen, the cursor) however `top`
/// ends: returning, an error, or a panic unwinding through it (ratatui's own panic hook
/// restores it before the message is printed, too).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
        let _ = crossterm::execute!(std::io::stdout(), crossterm::cursor::Show);
    }
}

/// `ballast top`.
pub fn top(socket: &Path, interval: f64) -> Result<(), String> {
    if !(interval.is_finite() && (0.1..=3600.0).contains(&interval)) {
        return Err(format!(
            "--interval {interval}: between 0.1 and 3600 seconds"
        ));
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(
            "top needs a terminal; `ballast list --json` and `ballast host --json` give the same figures to scripts"
                .into(),
        );
    }
    let interval = Duration::from_secs_f64(interval);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _restore = Restore;
    let mut terminal = ratatui::try_init().map_err(|e| format!("terminal: {e}"))?;
    let mut app = App::new(socket, interval);
    let client = Client::new(socket);
    rt.block_on(run(&mut terminal, &mut app, client))
}

async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    client: Client,
) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    use tokio::sync::mpsc;

    // Keys come from a thread of their own (crossterm reads blocking), so that a slow
    // refresh never delays `q`.
    let (keys_tx, mut keys) = mpsc::unbounded_channel::<std::io::Result<Event>>();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let e = match event::poll(Duration::from_millis(100)) {
                    Ok(false) => continue,
                    Ok(true) => event::read(),
                    Err(e) => Err(e),
                };
                let failed = e.is_err();
                if keys_tx.send(e).is_err() || failed {
                    break;
                }
            }
        })
    };
    struct StopReader(Arc<AtomicBool>);
    impl Drop for StopReader {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = StopReader(stop);

    // SIGTERM and SIGHUP (the terminal closing) leave through the same door as `q`, so
    // the terminal is put back.
    let sig = |k| signal(k).map_err(|e| format!("signals: {e}"));
    let (mut term, mut hup, mut int) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::hangup())?,
        sig(SignalKind::interrupt())?,
    );

    let (done_tx, mut done) = mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(app.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = false;
    let draw = |terminal: &mut ratatui::DefaultTerminal, app: &mut App| {
        terminal
            .draw(|f| app.render(f))
            .map(|_| ())
            .map_err(|e| format!("terminal: {e}"))
    };
    draw(terminal, app)?;
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {
                // One refresh at a time: a daemon that hangs gets no pile of requests.
                if !in_flight {
                    in_flight = true;
                    let c = client.clone();
                    let tx = done_tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(fetch(&c).await);
                    });
                }
                // The error line's "failing for" moves on.
                if app.error.is_some() {
                    draw(terminal, app)?;
                }
            }
            Some(r) = done.recv() => {
                in_flight = false;
                app.update(r);
                draw(terminal, app)?;
            }
            k = keys.recv() => match k {
                Some(Ok(Event::Key(k))) => match app.on_key(k) {
                    Action::Quit => break Ok(()),
                    Action::Redraw => draw(terminal, app)?,
                    Action::None => {}
                },
                Some(Ok(Event::Resize(..))) => draw(terminal, app)?,
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(format!("reading the terminal: {e}")),
                None => break Err("the terminal's input ended".into()),
            },
            _ = term.recv() => break Ok(()),
            _ = hup.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        }
    };
    drop(_stop);
    // Not joined: on a terminal that hung up, crossterm's read spins inside its poll and
    // never returns to see the stop, so joining would keep the process alive (and busy)
    // for ever. The thread ends with the process.
    drop(reader);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_daemon::api::types::{Operations, Settings};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    const MIB: u64 = 1 << 20;

    fn vm(name: &str, kind: GuestKind, assigned: u64) -> VmInfo {
        VmInfo {
            name: name.into(),
            kind,
            state: if assigned > 0 {
                VmState::Running
            } else {
                VmState::Stopped
            },
            settings: Settings {
                startup: 512 * MIB,
                minimum: 128 * MIB,
                maximum: 768 * MIB,
                buffer_percent: 20,
                weight: 50,
                vps: 1,
            },
            pinned_target: None,
            free_page_reporting: false,
            assigned,
            target: assigned,
            committed: (assigned > 0).then_some(assigned / 2),
            available: None,
            pressure: (assigned > 0).then_some(50.0),
            ballooned: 0,
            resident: (assigned > 0).then_some(assigned),
            stuck: false,
            unresponsive: false,
            partition: None,
            domid: None,
            operations: Operations::default(),
            violations: 0,
        }
    }

    fn host() -> HostInfo {
        HostInfo {
            version: "0.1.0".into(),
            policy: "ballast".into(),
            memory_bytes: 1024 * MIB,
            free_bytes: 256 * MIB,
            pools_bytes: 16 * MIB,
            resident_bytes: 700 * MIB,
            discarded_bytes: 0,
            reserve_bytes: 256 * MIB,
            vms: 3,
            running: 2,
            uptime_s: 3725.9,
        }
    }

    fn names(vms: &[VmInfo]) -> Vec<&str> {
        vms.iter().map(|v| v.name.as_str()).collect()
    }

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn sorting_goes_by_name_then_by_each_column_in_its_direction() {
        let mut vms = vec![
            vm("web", GuestKind::Dm, 512 * MIB),
            vm("db", GuestKind::Xen, 384 * MIB),
            vm("idle", GuestKind::Dm, 0),
        ];
        sort_vms(&mut vms, SortKey::Name, false);
        assert_eq!(names(&vms), ["db", "idle", "web"]);
        sort_vms(&mut vms, SortKey::Name, true);
        assert_eq!(names(&vms), ["web", "idle", "db"]);
        sort_vms(&mut vms, SortKey::Assigned, false);
        assert_eq!(names(&vms), ["web", "db", "idle"]);
        sort_vms(&mut vms, SortKey::Assigned, true);
        assert_eq!(names(&vms), ["idle", "db", "web"]);
        // Ties keep name order.
        sort_vms(&mut vms, SortKey::Kind, false);
        assert_eq!(names(&vms), ["idle", "web", "db"]);
        sort_vms(&mut vms, SortKey::State, false);
        assert_eq!(names(&vms), ["db", "web", "idle"]);
        // No pressure (a stopped VM) sorts below any pressure.
        sort_vms(&mut vms, SortKey::Pressure, false);
        assert_eq!(names(&vms), ["db", "web", "idle"]);
        vms[0].violations = 3;
        sort_vms(&mut vms, SortKey::Violations, false);
        assert_eq!(vms[0].name, "db");
    }

    #[test]
    fn s_walks_every_column_and_comes_back() {
        let mut k = SortKey::Name;
        let mut seen = vec![];
        for _ in 0..SortKey::ALL.len() {
            seen.push(COLUMNS[k.column()]);
            assert_eq!(k.next().prev(), k);
            k = k.next();
        }
        assert_eq!(k, SortKey::Name);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), SortKey::ALL.len(), "each key its own column");
    }

    #[test]
    fn rows_show_the_api_figures_and_mark_a_fixed_target() {
        let mut v = vm("web", GuestKind::Dm, 320 * MIB);
        v.pinned_target = Some(320 * MIB);
        v.ballooned = 192 * MIB;
        v.pressure = Some(41.6);
        v.violations = 2;
        v.stuck = true;
        assert_eq!(
            row_cells(&v),
            [
                "web",
                "dm",
                "running",
                "320.00 MiB",
                "320.00 MiB*",
                "160.00 MiB",
                "42%",
                "192.00 MiB",
                "320.00 MiB",
                "128.00 MiB",
                "768.00 MiB",
                "stuck",
                "2"
            ]
        );
        v.unresponsive = true;
        assert_eq!(row_cells(&v)[11], "unresp");
        let mut s = vm("db", GuestKind::Xen, 0);
        let c = row_cells(&s);
        assert_eq!(
            [&c[2], &c[3], &c[4], &c[5], &c[6], &c[7], &c[8], &c[11]],
            ["stopped", "-", "-", "-", "-", "-", "-", "-"]
        );
        // A stopped VM's fixed target is the one it will get.
        s.pinned_target = Some(200 * MIB);
        assert_eq!(row_cells(&s)[4], "200.00 MiB*");
    }

    #[test]
    fn a_narrow_terminal_loses_the_settings_first_and_never_the_sort_column() {
        let w = column_widths(8);
        let all: u16 = w.iter().sum::<u16>() + 12;
        assert_eq!(visible_columns(&w, all, 0).len(), 13);
        assert_eq!(visible_columns(&w, 200, 0).len(), 13);
        let v = visible_columns(&w, all - 1, 0);
        assert!(!v.contains(&9) && v.contains(&10), "{v:?}");
        // By MIN, then MAX goes first.
        let v = visible_columns(&w, all - 1, 9);
        assert!(v.contains(&9) && !v.contains(&10), "{v:?}");
        let v = visible_columns(&w, 10, 12);
        assert_eq!(v, [0, 2, 3, 4, 6, 8, 12]);
    }

    #[test]
    fn the_header_shows_the_host() {
        assert_eq!(uptime(3725.9), "01:02:05");
        assert_eq!(uptime(90061.0), "1d 01:01:01");
        assert_eq!(uptime(f64::NAN), "00:00:00");
        let [a, b] = host_lines(&host());
        assert_eq!(
            a,
            "policy ballast   VMs 2 running / 3 defined   up 01:02:05   daemon 0.1.0"
        );
        assert!(b.starts_with("memory 1.00 GiB   free 256.00 MiB   resident 700.00 MiB"));
        let (r, label) = used(&host());
        assert_eq!(r, 0.75);
        assert_eq!(label, "used 768.00 MiB of 1.00 GiB (75%)");
        let empty = HostInfo {
            memory_bytes: 0,
            free_bytes: 0,
            ..host()
        };
        assert_eq!(used(&empty).0, 0.0);
    }

    #[test]
    fn keys_quit_sort_and_reverse() {
        let mut app = App::new(Path::new("x.sock"), Duration::from_secs(1));
        let none = KeyModifiers::NONE;
        assert_eq!(app.on_key(press(KeyCode::Char('s'), none)), Action::Redraw);
        assert_eq!(app.sort, SortKey::Kind);
        app.on_key(press(KeyCode::Char('S'), KeyModifiers::SHIFT));
        assert_eq!(app.sort, SortKey::Name);
        assert_eq!(app.sort_label(), "sort NAME ▲");
        app.on_key(press(KeyCode::Char('r'), none));
        assert_eq!(app.sort_label(), "sort NAME ▼");
        assert_eq!(app.on_key(press(KeyCode::Char('x'), none)), Action::None);
        for k in [
            press(KeyCode::Char('q'), none),
            press(KeyCode::Esc, none),
            press(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            assert_eq!(app.on_key(k), Action::Quit);
        }
        // A release is not a press.
        let mut up = press(KeyCode::Char('q'), none);
        up.kind = KeyEventKind::Release;
        assert_eq!(app.on_key(up), Action::None);
    }

    #[test]
    fn an_error_keeps_the_last_figures_and_the_time_it_began() {
        let mut app = App::new(Path::new("x.sock"), Duration::from_secs(1));
        app.update(Ok(Snapshot {
            host: host(),
            vms: vec![vm("web", GuestKind::Dm, 512 * MIB)],
        }));
        app.update(Err("gone".into()));
        let since = app.error.as_ref().unwrap().1;
        app.update(Err("still gone".into()));
        let (e, t) = app.error.as_ref().unwrap();
        assert_eq!((e.as_str(), *t), ("still gone", since));
        assert_eq!(app.sorted().len(), 1);
        app.update(Ok(Snapshot {
            host: host(),
            vms: vec![],
        }));
        assert!(app.error.is_none());
    }

    fn screen(app: &mut App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| app.render(f)).unwrap();
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    /// The screen line whose first word is `name`: that VM's row.
    fn line_of(screen: &str, name: &str) -> usize {
        screen
            .lines()
            .position(|l| l.trim_matches(['│', ' ']).split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{screen}"))
    }

    #[test]
    fn the_screen_has_the_header_the_rows_and_the_keys() {
        let mut app = App::new(Path::new("ctl.sock"), Duration::from_secs(1));
        let s = screen(&mut app, 160, 20);
        assert!(s.contains("waiting for the daemon"), "{s}");
        let mut web = vm("web", GuestKind::Dm, 512 * MIB);
        web.pinned_target = Some(512 * MIB);
        app.update(Ok(Snapshot {
            host: host(),
            vms: vec![web, vm("db", GuestKind::Xen, 0)],
        }));
        let s = screen(&mut app, 160, 20);
        for want in [
            "ballast top",
            "policy ballast",
            "used 768.00 MiB of 1.00 GiB (75%)",
            "VMs (2)",
            "sort NAME ▲",
            "ASSIGNED",
            "512.00 MiB*",
            "q quit",
        ] {
            assert!(s.contains(want), "{want:?} in\n{s}");
        }
        assert!(line_of(&s, "db") < line_of(&s, "web"), "{s}");
        app.on_key(press(KeyCode::Char('s'), KeyModifiers::NONE));
        let s = screen(&mut app, 160, 20);
        assert!(s.contains("sort KIND ▲"));
        assert!(line_of(&s, "web") < line_of(&s, "db"), "{s}");
        app.update(Err("cannot reach the daemon".into()));
        let s = screen(&mut app, 160, 20);
        assert!(
            s.contains("error (for 0 s, retrying every 1 s): cannot reach the daemon"),
            "{s}"
        );
        assert!(s.contains("VMs (2), the last figures received"), "{s}");
        assert!(s.contains("512.00 MiB*"), "the last figures stay");
        // A narrower terminal leaves out the settings and keeps the headers whole.
        let s = screen(&mut app, 100, 12);
        assert!(!s.contains("MIN") && s.contains(" ASSIGNED "), "{s}");
        // A tiny one draws without panicking.
        screen(&mut app, 20, 5);
    }
}
