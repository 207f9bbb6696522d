//! Huawei Ascend NPU discovery through the `npu-smi` command line tool.
//!
//! The agent has no library binding for the Ascend driver, so it runs `npu-smi info` and parses
//! the box-drawn text table it prints. The parser understands every layout we have seen:
//!
//! * the classic two-row-per-chip table (`NPU Name | Health | Power(W) ...` over
//!   `Chip [Device|Phy-ID] | Bus-Id | AICore(%) Memory-Usage(MB) [HBM-Usage(MB)]`), with or without
//!   the `npu-smi X  Version: Y` banner and with or without the trailing process table;
//! * one NPU row followed by several chip rows (multi-chip cards such as Atlas 300I Duo);
//! * power printed as a number, `NA` or `-`;
//! * the chip map printed by `npu-smi info -m` (`NPU ID  Chip ID  Chip Logic ID  Chip Name`),
//!   in which rows without a numeric logic id (the `Mcu` management chips) are not NPUs.
//!
//! Everything here treats the tool's output as untrusted text: no input can make it panic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{run_with_timeout, RunError};

/// How long `npu-smi` may run before it is killed.
pub const NPU_SMI_TIMEOUT: Duration = Duration::from_secs(10);

/// One NPU chip as listed by `npu-smi info` (one entry per chip; multi-chip cards give several
/// entries sharing the same `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NpuCard {
    /// NPU (card) id, the `-i` argument of `npu-smi`; not necessarily contiguous from 0.
    pub id: u32,
    /// Chip id within the card.
    pub chip: u32,
    /// Chip name as printed, e.g. `910B`, `910B4`, `310P3` (the `Ascend ` prefix of `-m`
    /// output is dropped).
    pub name: String,
    /// Health as printed (`OK`, `Warning`, `Alarm`, `Critical`, ...); empty when not printed.
    pub health: String,
    /// Power draw in watts; `None` when printed as `NA` or `-` or not printed at all.
    pub power_w: Option<f64>,
    /// HBM capacity in MB, from the `HBM-Usage(MB)` column (or `npu-smi info -t usages`).
    pub hbm_total_mb: Option<u64>,
    /// HBM in use in MB, from the `HBM-Usage(MB)` column.
    pub hbm_used_mb: Option<u64>,
}

/// Everything `npu-smi info` told us: tool and driver versions plus the chips.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NpuSmiInfo {
    /// Version of the `npu-smi` tool (`npu-smi 24.1.0` in the banner).
    pub npu_smi_version: Option<String>,
    /// Driver version (`Version: 24.1.0` in the banner).
    pub driver_version: Option<String>,
    /// Firmware version; `npu-smi info` does not print it, so this is only set by callers that
    /// learn it elsewhere.
    pub firmware_version: Option<String>,
    /// The chips, in the order printed.
    pub cards: Vec<NpuCard>,
    /// The processes on the chips, from the process table after the chip table
    /// (`| NPU Chip | Process id | Process name | Process memory(MB) |`).
    #[serde(default)]
    pub processes: Vec<NpuProcess>,
}

/// One row of `npu-smi info`'s process table: a process holding a chip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NpuProcess {
    /// NPU (card) id.
    pub id: u32,
    /// Chip id within the card.
    pub chip: u32,
    /// Process id as printed.
    pub pid: u32,
    /// Process name as printed.
    pub name: String,
    /// Device memory it holds in MB; `None` when not printed as a number.
    pub memory_mb: Option<u64>,
}

/// Why a piece of text could not be read as `npu-smi info` output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpuSmiParseError {
    /// Nothing but whitespace.
    #[error("npu-smi printed nothing")]
    Empty,
    /// No table header or version banner anywhere in the text.
    #[error(
        "not npu-smi info output: found neither the `| NPU  Name | Health | ...` table header \
         nor the `NPU ID  Chip ID  Chip Logic ID  Chip Name` header (first line: {first_line:?})"
    )]
    NoTable {
        /// The first non-blank line, to show what was printed instead.
        first_line: String,
    },
    /// A line inside the table that does not have the expected shape.
    #[error("npu-smi output line {line}: {reason} (line: {text:?})")]
    BadLine {
        /// 1-based line number in the text.
        line: usize,
        /// What was wrong, in words.
        reason: String,
        /// The offending line, trimmed.
        text: String,
    },
}

/// Why running `npu-smi` failed.
#[derive(Debug, thiserror::Error)]
pub enum NpuProbeError {
    /// The binary exists but could not be started (permissions, bad format, ...).
    #[error("could not run {path}: {source}")]
    Spawn {
        /// The `npu-smi` path used.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than [`NPU_SMI_TIMEOUT`] and was killed.
    #[error("{path} info did not finish within {}s and was killed", timeout.as_secs())]
    Timeout {
        /// The `npu-smi` path used.
        path: PathBuf,
        /// The limit it ran past.
        timeout: Duration,
    },
    /// It exited unsuccessfully.
    #[error("{path} info failed ({status}): {stderr}")]
    Failed {
        /// The `npu-smi` path used.
        path: PathBuf,
        /// Exit status in words.
        status: String,
        /// What it printed on stderr (or stdout when stderr was empty), trimmed.
        stderr: String,
    },
    /// It succeeded but printed something we cannot read.
    #[error("could not read the output of {path} info: {source}")]
    Parse {
        /// The `npu-smi` path used.
        path: PathBuf,
        /// What was wrong with the text.
        #[source]
        source: NpuSmiParseError,
    },
}

/// Which part of the text the parser is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Before any table header.
    None,
    /// Inside the NPU/chip table.
    Info,
    /// Inside the process table.
    Processes,
}

/// The first (NPU) row of a chip entry, waiting for its chip row.
#[derive(Debug)]
struct NpuRow {
    id: u32,
    name: String,
    health: String,
    power_w: Option<f64>,
    line: usize,
    text: String,
    /// Whether at least one chip row followed it.
    used: bool,
}

/// Parses the text printed by `npu-smi info` (or `npu-smi info -m`).
///
/// A table with a header but no rows yields zero cards; text that is not `npu-smi` output, or a
/// table with malformed or truncated rows, yields an error naming the line.
pub fn parse_info(text: &str) -> Result<NpuSmiInfo, NpuSmiParseError> {
    if text.trim().is_empty() {
        return Err(NpuSmiParseError::Empty);
    }
    if let Some(header) = text.lines().position(is_chip_map_header) {
        return parse_chip_map(text, header);
    }

    let mut info = NpuSmiInfo::default();
    let mut section = Section::None;
    let mut saw_table = false;
    // Index of the HBM pair among the `*-Usage` columns of the chip row, from the header.
    let mut hbm_column: Option<usize> = None;
    let mut saw_chip_header = false;
    let mut pending: Option<NpuRow> = None;

    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || is_border(trimmed) || !trimmed.starts_with('|') {
            continue;
        }
        let cells = split_cells(trimmed);
        let first: Vec<&str> = cells
            .first()
            .map(|c| c.split_whitespace().collect())
            .unwrap_or_default();

        match first.as_slice() {
            ["npu-smi", rest @ ..] => {
                saw_table = true;
                info.npu_smi_version = rest
                    .first()
                    .filter(|v| !v.ends_with(':'))
                    .map(|v| (*v).to_string());
                info.driver_version = banner_driver_version(trimmed);
                continue;
            }
            ["NPU", "Name", ..] => {
                saw_table = true;
                section = Section::Info;
                continue;
            }
            ["NPU", "Chip", ..] => {
                finish_pending(&mut pending)?;
                section = Section::Processes;
                continue;
            }
            ["Chip", ..] if section == Section::Info => {
                saw_chip_header = true;
                hbm_column = cells.get(2).and_then(|c| {
                    c.split_whitespace()
                        .filter(|t| t.contains("-Usage"))
                        .position(|t| t.starts_with("HBM"))
                });
                continue;
            }
            _ => {}
        }
        let bad = |reason: &str| NpuSmiParseError::BadLine {
            line,
            reason: reason.to_string(),
            text: shown_line(trimmed),
        };
        if section == Section::Processes {
            if let Some(p) = process_row(&first, &cells).map_err(bad)? {
                info.processes.push(p);
            }
            continue;
        }
        if section != Section::Info {
            continue;
        }
        if !trimmed.ends_with('|') {
            return Err(bad("row does not end with '|' (output cut off?)"));
        }
        if cells.len() < 3 {
            return Err(bad("expected at least 3 columns separated by '|'"));
        }
        let second = cells.get(1).copied().unwrap_or_default();

        if is_bus_id(second) {
            // Chip row: `Chip [Device|Phy-ID] | Bus-Id | AICore(%) Memory-Usage HBM-Usage`.
            let Some(npu) = pending.as_mut() else {
                return Err(bad("chip row without an NPU row before it"));
            };
            let chip = first
                .first()
                .and_then(|t| t.parse::<u32>().ok())
                .ok_or_else(|| bad("chip id is not a number"))?;
            let pairs = usage_pairs(cells.get(2).copied().unwrap_or_default());
            let hbm = match hbm_column {
                Some(i) => pairs.get(i).copied(),
                // Without a header line we cannot know; the HBM pair, when present, follows the
                // memory pair.
                None if !saw_chip_header => pairs.get(1).copied(),
                None => None,
            };
            npu.used = true;
            info.cards.push(NpuCard {
                id: npu.id,
                chip,
                name: npu.name.clone(),
                health: npu.health.clone(),
                power_w: npu.power_w,
                hbm_total_mb: hbm.map(|(_, total)| total),
                hbm_used_mb: hbm.map(|(used, _)| used),
            });
        } else {
            // NPU row: `NPU Name | Health | Power(W) Temp(C) Hugepages-Usage(page)`.
            finish_pending(&mut pending)?;
            let id = first
                .first()
                .and_then(|t| t.parse::<u32>().ok())
                .ok_or_else(|| bad("NPU id is not a number"))?;
            let name = first.get(1..).unwrap_or_default().join(" ");
            if name.is_empty() {
                return Err(bad("NPU row has no chip name"));
            }
            if second.is_empty() {
                return Err(bad("NPU row has no health value"));
            }
            let power_w = cells
                .get(2)
                .and_then(|c| c.split_whitespace().next())
                .and_then(parse_power);
            pending = Some(NpuRow {
                id,
                name,
                health: second.to_string(),
                power_w,
                line,
                text: shown_line(trimmed),
                used: false,
            });
        }
    }
    finish_pending(&mut pending)?;

    if !saw_table {
        return Err(NpuSmiParseError::NoTable {
            first_line: first_line(text),
        });
    }
    Ok(info)
}

/// One row of the process table: `Some` for a process, `None` for
/// `No running processes found in NPU N`, or what is wrong with it.
fn process_row(first: &[&str], cells: &[&str]) -> Result<Option<NpuProcess>, &'static str> {
    if first.first() == Some(&"No") {
        return Ok(None);
    }
    let number = |t: Option<&&str>| t.and_then(|t| t.parse::<u32>().ok());
    let id = number(first.first()).ok_or("process row: NPU id is not a number")?;
    let chip = number(first.get(1)).ok_or("process row: chip id is not a number")?;
    let pid = cells
        .get(1)
        .and_then(|c| c.trim().parse::<u32>().ok())
        .ok_or("process row: process id is not a number")?;
    let name = cells.get(2).map(|c| c.trim()).unwrap_or_default();
    if name.is_empty() {
        return Err("process row has no process name");
    }
    let memory_mb = cells.get(3).and_then(|c| c.trim().parse::<u64>().ok());
    Ok(Some(NpuProcess {
        id,
        chip,
        pid,
        name: name.chars().take(128).collect(),
        memory_mb,
    }))
}

/// Reads the HBM capacity in MB from `npu-smi info -t usages -i N` output
/// (`HBM Capacity(MB) : 65536`); `None` when the line is missing or not a number.
pub fn parse_usages(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        if key.trim().eq_ignore_ascii_case("HBM Capacity(MB)") {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Runs `<npu_smi> info` (killed after [`NPU_SMI_TIMEOUT`]) and parses what it prints.
///
/// A missing binary means "no Ascend software here" and gives zero cards, not an error. Cards
/// whose table row shows no HBM column (older 910 drivers) get their capacity from
/// `npu-smi info -t usages -i ID` when that works.
pub fn probe_npus(npu_smi: &Path) -> Result<NpuSmiInfo, NpuProbeError> {
    let mut cmd = Command::new(npu_smi);
    cmd.arg("info");
    let output = match run_with_timeout(&mut cmd, NPU_SMI_TIMEOUT) {
        Ok(output) => output,
        Err(RunError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            debug!(path = %npu_smi.display(), "npu-smi not found: no Ascend NPUs");
            return Ok(NpuSmiInfo::default());
        }
        Err(RunError::Spawn(source)) | Err(RunError::Wait(source)) => {
            return Err(NpuProbeError::Spawn {
                path: npu_smi.to_path_buf(),
                source,
            })
        }
        Err(RunError::Timeout(timeout)) => {
            return Err(NpuProbeError::Timeout {
                path: npu_smi.to_path_buf(),
                timeout,
            })
        }
    };
    if !output.status.success() {
        let said = [output.stderr.trim(), output.stdout.trim()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or("(no output)");
        return Err(NpuProbeError::Failed {
            path: npu_smi.to_path_buf(),
            status: output.status.to_string(),
            stderr: said.chars().take(2000).collect(),
        });
    }
    let mut info = parse_info(&output.stdout).map_err(|source| NpuProbeError::Parse {
        path: npu_smi.to_path_buf(),
        source,
    })?;
    fill_hbm_from_usages(npu_smi, &mut info);
    Ok(info)
}

/// Asks `npu-smi info -t usages` for the HBM capacity of 910-family cards whose table row did
/// not show it. Best effort: failures leave the field empty.
fn fill_hbm_from_usages(npu_smi: &Path, info: &mut NpuSmiInfo) {
    let mut ids: Vec<u32> = info
        .cards
        .iter()
        .filter(|c| c.hbm_total_mb.is_none() && c.name.contains("910"))
        .map(|c| c.id)
        .collect();
    ids.dedup();
    for id in ids {
        let mut cmd = Command::new(npu_smi);
        cmd.args(["info", "-t", "usages", "-i", &id.to_string()]);
        let capacity = match run_with_timeout(&mut cmd, NPU_SMI_TIMEOUT) {
            Ok(out) if out.status.success() => parse_usages(&out.stdout),
            Ok(out) => {
                warn!(id, status = %out.status, "npu-smi info -t usages failed");
                None
            }
            Err(e) => {
                warn!(id, error = %e, "npu-smi info -t usages failed");
                None
            }
        };
        if let Some(mb) = capacity {
            for card in info.cards.iter_mut().filter(|c| c.id == id) {
                card.hbm_total_mb = Some(mb);
            }
        }
    }
}

/// Returns the installed CANN toolkit version (e.g. `8.0.RC3`), looking under
/// `$ASCEND_TOOLKIT_HOME`, `$ASCEND_HOME_PATH`, `/usr/local/Ascend/ascend-toolkit/latest` and
/// `/usr/local/Ascend/cann` (the CANN 8.5 layout); `None` when no toolkit is installed.
pub fn cann_version() -> Option<String> {
    let mut roots: Vec<PathBuf> = ["ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .collect();
    roots.push(PathBuf::from("/usr/local/Ascend/ascend-toolkit/latest"));
    roots.push(PathBuf::from("/usr/local/Ascend/cann"));
    roots.iter().find_map(|root| cann_version_in(root))
}

/// Reads the CANN version from one toolkit directory: `<root>/*/ascend_toolkit_install.info`
/// first, then `<root>/version.cfg`.
pub fn cann_version_in(root: &Path) -> Option<String> {
    let mut infos: Vec<PathBuf> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("ascend_toolkit_install.info"))
        .filter(|p| p.is_file())
        .collect();
    infos.sort();
    infos.push(root.join("version.cfg"));
    infos.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let version = parse_cann_version_file(&text);
        debug!(path = %path.display(), ?version, "read CANN version file");
        version
    })
}

/// Extracts the version from the text of `ascend_toolkit_install.info` (`version=8.0.RC3`) or
/// `version.cfg` (a `version=` line, or `<package>_version=[<inner>:<public>]` lines, from which
/// the public part after the last `:` is taken).
pub fn parse_cann_version_file(text: &str) -> Option<String> {
    let pairs = || {
        text.lines().filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'').trim();
            (!value.is_empty()).then_some((key.trim(), value))
        })
    };
    if let Some((_, v)) = pairs().find(|(k, _)| k.eq_ignore_ascii_case("version")) {
        return Some(v.to_string());
    }
    pairs().find_map(|(key, value)| {
        if !key.ends_with("_version") {
            return None;
        }
        let inner = value.strip_prefix('[')?.strip_suffix(']')?;
        let public = inner.rsplit(':').next()?.trim();
        (!public.is_empty()).then(|| public.to_string())
    })
}

/// Ends the pending NPU row: an NPU row must be followed by at least one chip row.
fn finish_pending(pending: &mut Option<NpuRow>) -> Result<(), NpuSmiParseError> {
    match pending.take() {
        Some(npu) if !npu.used => Err(NpuSmiParseError::BadLine {
            line: npu.line,
            reason: format!(
                "NPU {} has no chip row after it (output truncated?)",
                npu.id
            ),
            text: npu.text,
        }),
        _ => Ok(()),
    }
}

/// `+-----+====+` borders between rows.
fn is_border(line: &str) -> bool {
    line.starts_with('+') && line.chars().all(|c| matches!(c, '+' | '-' | '='))
}

/// Splits `| a | b | c |` into trimmed cells `["a", "b", "c"]`.
fn split_cells(line: &str) -> Vec<&str> {
    let inner = line.strip_prefix('|').unwrap_or(line);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(str::trim).collect()
}

/// The driver version in the banner: the word after `Version:`.
fn banner_driver_version(line: &str) -> Option<String> {
    let (_, after) = line.split_once("Version:")?;
    let version = after.split_whitespace().next()?.trim_end_matches('|');
    (!version.is_empty()).then(|| version.to_string())
}

/// A PCI address such as `0000:C1:00.0` (or `NA` where the driver hides it).
fn is_bus_id(cell: &str) -> bool {
    if matches!(cell, "NA" | "N/A" | "-") {
        return true;
    }
    cell.contains(':')
        && cell
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
}

/// Power in watts; `NA`, `-` and other non-numbers mean "not reported".
fn parse_power(token: &str) -> Option<f64> {
    token.parse::<f64>().ok().filter(|w| w.is_finite())
}

/// All `used / total` pairs in a cell, in order (`1197 / 13553      1365 / 32768`).
fn usage_pairs(cell: &str) -> Vec<(u64, u64)> {
    let spaced = cell.replace('/', " / ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let triple = (tokens.get(i), tokens.get(i + 1), tokens.get(i + 2));
        if let (Some(a), Some(&"/"), Some(b)) = triple {
            if let (Ok(used), Ok(total)) = (a.parse::<u64>(), b.parse::<u64>()) {
                pairs.push((used, total));
                i += 3;
                continue;
            }
        }
        i += 1;
    }
    pairs
}

/// The header of `npu-smi info -m`: `NPU ID  Chip ID  Chip Logic ID  Chip Name`.
fn is_chip_map_header(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.starts_with(&["NPU", "ID", "Chip", "ID"])
        && words.windows(3).any(|w| w == ["Chip", "Logic", "ID"])
        && words.ends_with(&["Chip", "Name"])
}

/// Parses `npu-smi info -m` output starting at its header line (0-based `header`).
fn parse_chip_map(text: &str, header: usize) -> Result<NpuSmiInfo, NpuSmiParseError> {
    let header_line = text.lines().nth(header).unwrap_or_default();
    // Column titles are separated by runs of spaces; titles themselves contain single spaces.
    let titles: Vec<String> = header_line
        .replace('\t', "  ")
        .split("  ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let column = |name: &str| titles.iter().position(|t| t == name);
    let (Some(npu_col), Some(chip_col), Some(logic_col), Some(name_col)) = (
        column("NPU ID"),
        column("Chip ID"),
        column("Chip Logic ID"),
        column("Chip Name"),
    ) else {
        return Err(NpuSmiParseError::BadLine {
            line: header + 1,
            reason: "unrecognised `npu-smi info -m` header".to_string(),
            text: shown_line(header_line.trim()),
        });
    };
    if name_col + 1 != titles.len() {
        return Err(NpuSmiParseError::BadLine {
            line: header + 1,
            reason: "`Chip Name` is not the last column of `npu-smi info -m`".to_string(),
            text: shown_line(header_line.trim()),
        });
    }

    let mut info = NpuSmiInfo::default();
    for (index, raw) in text.lines().enumerate().skip(header + 1) {
        let line = index + 1;
        let words: Vec<&str> = raw.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let bad = |reason: &str| NpuSmiParseError::BadLine {
            line,
            reason: reason.to_string(),
            text: shown_line(raw.trim()),
        };
        // Every column but the last is one word; the name (last column) may contain spaces.
        if words.len() < titles.len() {
            return Err(bad("row has fewer columns than the header"));
        }
        let word = |i: usize| words.get(i).copied().unwrap_or_default();
        let name = words.get(name_col..).unwrap_or_default().join(" ");
        let logic = word(logic_col);
        if logic.parse::<u32>().is_err() || name.eq_ignore_ascii_case("mcu") {
            debug!(line, "skipping management chip row in npu-smi info -m");
            continue;
        }
        let id = word(npu_col)
            .parse::<u32>()
            .map_err(|_| bad("NPU id is not a number"))?;
        let chip = word(chip_col)
            .parse::<u32>()
            .map_err(|_| bad("chip id is not a number"))?;
        let name = name
            .strip_prefix("Ascend")
            .map(str::trim_start)
            .filter(|n| !n.is_empty())
            .unwrap_or(&name)
            .to_string();
        info.cards.push(NpuCard {
            id,
            chip,
            name,
            health: String::new(),
            power_w: None,
            hbm_total_mb: None,
            hbm_used_mb: None,
        });
    }
    Ok(info)
}

/// A line as an error quotes it: its first 120 characters, then `...` (a
/// 100 KB line must not make a 100 KB message).
fn shown_line(line: &str) -> String {
    match line.char_indices().nth(120) {
        None => line.to_string(),
        Some((end, _)) => format!("{}...", &line[..end]),
    }
}

/// The first non-blank line, shortened, for error messages.
fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/npu-smi/",
                $name
            ))
        };
    }

    const F910B_8: &str = fixture!("info-910b-8card-24.1.0.txt");
    const F310: &str = fixture!("info-310-23.0.0.txt");
    const F310P3: &str = fixture!("info-310p3-25.3.rc1.txt");
    const F310P3_2: &str = fixture!("info-310p3-2card-no-header.txt");
    const F910B4: &str = fixture!("info-910b4-1card-id2.txt");
    const USAGES: &str = fixture!("usages-ascend910.txt");
    /// Constructed, not recorded: the recorded 8-card table followed by a
    /// process table in the documented `npu-smi info` layout.
    const F910B_PROCS: &str = fixture!("info-910b-8card-with-processes.txt");
    const ALL: [&str; 7] = [F910B_8, F310, F310P3, F310P3_2, F910B4, USAGES, F910B_PROCS];

    fn card(
        id: u32,
        chip: u32,
        name: &str,
        power: Option<f64>,
        hbm: Option<(u64, u64)>,
    ) -> NpuCard {
        NpuCard {
            id,
            chip,
            name: name.to_string(),
            health: "OK".to_string(),
            power_w: power,
            hbm_total_mb: hbm.map(|h| h.1),
            hbm_used_mb: hbm.map(|h| h.0),
        }
    }

    #[test]
    fn fixture_910b_8card() {
        let info = parse_info(F910B_8).expect("parses");
        assert_eq!(info.npu_smi_version.as_deref(), Some("24.1.0"));
        assert_eq!(info.driver_version.as_deref(), Some("24.1.0"));
        assert_eq!(info.firmware_version, None);
        let expected = [
            (0, 70.0, 1365),
            (1, 66.9, 4),
            (2, 69.8, 4),
            (3, 67.2, 3),
            (4, 68.9, 3),
            (5, 66.3, 5),
            (6, 70.1, 5),
            (7, 65.6, 4),
        ];
        let expected: Vec<NpuCard> = expected
            .iter()
            .map(|&(id, w, used)| card(id, 0, "910B", Some(w), Some((used, 32768))))
            .collect();
        assert_eq!(info.cards, expected);
    }

    #[test]
    fn fixture_310_with_process_table() {
        let info = parse_info(F310).expect("parses");
        assert_eq!(info.npu_smi_version.as_deref(), Some("23.0.0"));
        assert_eq!(info.driver_version.as_deref(), Some("23.0.0"));
        // 577 / 7759 is DDR memory, not HBM.
        assert_eq!(info.cards, vec![card(0, 0, "310", Some(12.8), None)]);
    }

    #[test]
    fn the_process_table_lists_each_process_on_its_chip() {
        let info = parse_info(F910B_PROCS).expect("parses");
        assert_eq!(info.cards, parse_info(F910B_8).expect("parses").cards);
        let p = |id, pid, name: &str, mb| NpuProcess {
            id,
            chip: 0,
            pid,
            name: name.into(),
            memory_mb: Some(mb),
        };
        assert_eq!(
            info.processes,
            vec![
                p(2, 12345, "python3", 1024),
                p(2, 12377, "python3", 3072),
                p(5, 23456, "ray::IDLE", 61440),
            ]
        );
        // "No running processes found" everywhere: none.
        assert!(parse_info(F310).expect("parses").processes.is_empty());
        assert!(parse_info(F910B_8).expect("parses").processes.is_empty());
        // A process row with a pid that is not a number is an error naming its line.
        let bad = F910B_PROCS.replacen("| 12345 ", "| 12x45 ", 1);
        assert_ne!(bad, F910B_PROCS);
        match parse_info(&bad) {
            Err(NpuSmiParseError::BadLine { line, reason, .. }) => {
                assert_eq!(line, 38);
                assert!(reason.contains("process id"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fixture_310p3_power_na() {
        let info = parse_info(F310P3).expect("parses");
        assert_eq!(info.npu_smi_version.as_deref(), Some("25.3.rc1"));
        assert_eq!(info.driver_version.as_deref(), Some("25.3.rc1"));
        assert_eq!(info.cards, vec![card(6, 0, "310P3", None, None)]);
    }

    #[test]
    fn fixture_310p3_two_cards_without_banner() {
        let info = parse_info(F310P3_2).expect("parses");
        assert_eq!(info.npu_smi_version, None);
        assert_eq!(info.driver_version, None);
        assert_eq!(
            info.cards,
            vec![
                card(0, 0, "310P3", Some(15.8), None),
                card(1, 0, "310P3", Some(15.4), None),
            ]
        );
    }

    #[test]
    fn fixture_910b4_single_card_id_2() {
        let info = parse_info(F910B4).expect("parses");
        assert_eq!(info.npu_smi_version, None);
        assert_eq!(
            info.cards,
            vec![card(2, 0, "910B4", Some(88.9), Some((2858, 32768)))]
        );
    }

    #[test]
    fn fixture_usages_hbm_capacity() {
        assert_eq!(parse_usages(USAGES), Some(65536));
        assert_eq!(parse_usages(F910B_8), None);
        assert_eq!(parse_usages(""), None);
        assert_eq!(parse_usages("    HBM Capacity(MB)  : lots"), None);
    }

    #[test]
    fn usages_output_is_not_an_info_table() {
        assert!(matches!(
            parse_info(USAGES),
            Err(NpuSmiParseError::NoTable { .. })
        ));
    }

    /// Atlas A3 / 910C: a `Chip Phy-ID` column and two chips per NPU, each chip with its own
    /// NPU row; the second chip reports power as `-`.
    #[test]
    fn variant_910c_chip_phy_id_column() {
        let text = "\
+------------------------------------------------------------------------------------------------+
| npu-smi 24.1.rc3                 Version: 24.1.rc3                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip  Phy-ID              | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     Ascend910           | OK            | 171.8       36                0    / 0             |
| 0     0                   | 0000:9D:00.0  | 0           0    / 0          3404 / 65536         |
+------------------------------------------------------------------------------------------------+
| 0     Ascend910           | OK            | -           36                0    / 0             |
| 1     1                   | 0000:9F:00.0  | 0           0    / 0          3152 / 65536         |
+===========================+===============+====================================================+
| 1     Ascend910           | Warning       | 168.2       35                0    / 0             |
| 0     2                   | 0000:99:00.0  | 0           0    / 0          3387 / 65536         |
+------------------------------------------------------------------------------------------------+
| 1     Ascend910           | OK            | -           35                0    / 0             |
| 1     3                   | 0000:9B:00.0  | 0           0    / 0          3154 / 65536         |
+===========================+===============+====================================================+
";
        let info = parse_info(text).expect("parses");
        assert_eq!(info.driver_version.as_deref(), Some("24.1.rc3"));
        let mut warn = card(1, 0, "Ascend910", Some(168.2), Some((3387, 65536)));
        warn.health = "Warning".to_string();
        assert_eq!(
            info.cards,
            vec![
                card(0, 0, "Ascend910", Some(171.8), Some((3404, 65536))),
                card(0, 1, "Ascend910", None, Some((3152, 65536))),
                warn,
                card(1, 1, "Ascend910", None, Some((3154, 65536))),
            ]
        );
    }

    /// Old 910 (npu-smi 1.x): power printed as `-`, no HBM column.
    #[test]
    fn variant_old_910_power_dash() {
        let text = "\
+------------------------------------------------------------------------------------+
| npu-smi 1.8.21                   Version: 20.2.2                                   |
+-------------------+-----------------+----------------------------------------------+
| NPU     Name      | Health          | Power(W)          Temp(C)                    |
| Chip              | Bus-Id          | AICore(%)         Memory-Usage(MB)           |
+===================+=================+==============================================+
| 0       910A      | OK              | -                 40                         |
| 0                 | 0000:C1:00.0    | 0                 2620 / 15079               |
+===================+=================+==============================================+
| 1       910A      | Critical        | -                 39                         |
| 0                 | 0000:81:00.0    | 0                 2620 / 15079               |
+===================+=================+==============================================+
";
        let info = parse_info(text).expect("parses");
        assert_eq!(info.npu_smi_version.as_deref(), Some("1.8.21"));
        assert_eq!(info.driver_version.as_deref(), Some("20.2.2"));
        let mut critical = card(1, 0, "910A", None, None);
        critical.health = "Critical".to_string();
        assert_eq!(info.cards, vec![card(0, 0, "910A", None, None), critical]);
    }

    /// Multi-chip card (Atlas 300I Duo): one NPU row, then a chip row per chip.
    #[test]
    fn variant_one_npu_row_several_chip_rows() {
        let text = "\
+--------------------------+---------------+----------------------------------------------------+
| NPU     Name             | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip    Device           | Bus-Id        | AICore(%)   Memory-Usage(MB)                        |
+==========================+===============+====================================================+
| 1       310P3            | OK            | NA          52                0     / 0            |
| 0       0                | 0000:01:00.0  | 0           1701 / 44280                            |
| 1       1                | 0000:01:00.0  | 0           1447 / 43693                            |
+==========================+===============+====================================================+
";
        let info = parse_info(text).expect("parses");
        assert_eq!(
            info.cards,
            vec![
                card(1, 0, "310P3", None, None),
                card(1, 1, "310P3", None, None)
            ]
        );
    }

    /// `npu-smi info -m`: the `Mcu` rows are management chips and are skipped.
    #[test]
    fn variant_chip_map() {
        let text = "\
\tNPU ID                         Chip ID                        Chip Logic ID                  Chip Name
\t0                              0                              0                              Ascend 910B2
\t0                              1                              -                              Mcu
\t1                              0                              1                              Ascend 910B2
\t1                              1                              Mcu                            Mcu
\t3                              0                              2                              Ascend 910B2
";
        let info = parse_info(text).expect("parses");
        assert_eq!(info.npu_smi_version, None);
        let plain = |id| NpuCard {
            id,
            chip: 0,
            name: "910B2".to_string(),
            health: String::new(),
            power_w: None,
            hbm_total_mb: None,
            hbm_used_mb: None,
        };
        assert_eq!(info.cards, vec![plain(0), plain(1), plain(3)]);
    }

    #[test]
    fn chip_map_bad_row_is_an_error() {
        let text = "NPU ID   Chip ID   Chip Logic ID   Chip Name\nx  0  0  Ascend 310\n";
        let err = parse_info(text).expect_err("bad id");
        assert!(
            matches!(err, NpuSmiParseError::BadLine { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn empty_table_has_zero_cards() {
        let header_only: String = F910B4.lines().take(4).map(|l| format!("{l}\n")).collect();
        let info = parse_info(&header_only).expect("parses");
        assert!(info.cards.is_empty());

        let chip_map_header = "NPU ID   Chip ID   Chip Logic ID   Chip Name\n";
        assert_eq!(parse_info(chip_map_header), Ok(NpuSmiInfo::default()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(parse_info(""), Err(NpuSmiParseError::Empty));
        assert_eq!(parse_info(" \n\t\n"), Err(NpuSmiParseError::Empty));
        let err = parse_info("bash: npu-smi: command not found\n").expect_err("garbage");
        assert!(err.to_string().contains("command not found"), "{err}");
        assert!(parse_info("| hello | world |\n| 1 | 2 | 3 |").is_err());
        assert!(parse_info("\u{0}\u{1}binary\u{fffd}").is_err());
    }

    #[test]
    fn truncated_table_reports_the_line() {
        // Cut after the NPU row of card 1: its chip row is missing.
        let cut: String = F910B_8.lines().take(10).map(|l| format!("{l}\n")).collect();
        let err = parse_info(&cut).expect_err("truncated");
        assert!(
            matches!(err, NpuSmiParseError::BadLine { line: 10, .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("line 10"), "{message}");
        assert!(message.contains("NPU 1 has no chip row"), "{message}");
    }

    #[test]
    fn bad_npu_id_reports_the_line() {
        let text = F910B4.replace("| 2     910B4", "| x     910B4");
        let err = parse_info(&text).expect_err("bad id");
        assert!(
            matches!(err, NpuSmiParseError::BadLine { line: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("NPU id is not a number"));
    }

    /// Every prefix, every line-dropped variant and many byte-mangled variants of every fixture
    /// must parse or fail cleanly; truncations never invent cards.
    #[test]
    fn truncated_and_garbled_fixtures_never_panic() {
        let junk = ['|', '+', '/', ':', ' ', '\n', '9', 'x', '\t', 'é', '-', '='];
        for fixture in ALL {
            let full = parse_info(fixture).map(|i| i.cards.len()).unwrap_or(0);
            for (cut, _) in fixture.char_indices() {
                let prefix = &fixture[..cut];
                if let Ok(info) = parse_info(prefix) {
                    assert!(info.cards.len() <= full, "prefix invented cards");
                }
                let _ = parse_usages(prefix);
                let _ = parse_info(&fixture[cut..]);
            }
            let lines: Vec<&str> = fixture.lines().collect();
            for skip in 0..lines.len() {
                let dropped: Vec<&str> = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, l)| *l)
                    .collect();
                let _ = parse_info(&dropped.join("\n"));
            }
            let chars: Vec<char> = fixture.chars().collect();
            for i in (0..chars.len()).step_by(2) {
                let mut mangled = chars.clone();
                if let Some(slot) = mangled.get_mut(i) {
                    *slot = junk[i % junk.len()];
                }
                if let Some(slot) = mangled.get_mut(i + i % 7) {
                    *slot = junk[(i / 2) % junk.len()];
                }
                let text: String = mangled.into_iter().collect();
                let _ = parse_info(&text);
                let _ = parse_usages(&text);
            }
        }
    }

    #[test]
    fn cann_version_file_lines() {
        let info = "package_name=Ascend-cann-toolkit\nversion=8.0.RC3\n\
                    innerversion=V100R001C19SPC001B122\narch=aarch64\nos=linux\n";
        assert_eq!(parse_cann_version_file(info).as_deref(), Some("8.0.RC3"));
        let quoted = "  Version = \"7.0.0\"  \n";
        assert_eq!(parse_cann_version_file(quoted).as_deref(), Some("7.0.0"));
        let cfg = "# version: 1.0\nruntime_running_version=[7.0.0.5.242:7.0.RC1]\n\
                   compiler_running_version=[7.0.0.5.242:7.0.RC1]\n";
        assert_eq!(parse_cann_version_file(cfg).as_deref(), Some("7.0.RC1"));
        assert_eq!(parse_cann_version_file(""), None);
        assert_eq!(parse_cann_version_file("version=\n# version=1\n"), None);
        assert_eq!(parse_cann_version_file("x_version=[]"), None);
    }

    #[test]
    fn cann_version_from_toolkit_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(cann_version_in(dir.path()), None);
        std::fs::write(
            dir.path().join("version.cfg"),
            "toolkit_installed_version=[8.0.0.1:8.0.RC2]\n",
        )
        .expect("write");
        assert_eq!(cann_version_in(dir.path()).as_deref(), Some("8.0.RC2"));
        let arch = dir.path().join("aarch64-linux");
        std::fs::create_dir(&arch).expect("mkdir");
        std::fs::write(
            arch.join("ascend_toolkit_install.info"),
            "version=8.0.RC3\n",
        )
        .expect("write");
        assert_eq!(cann_version_in(dir.path()).as_deref(), Some("8.0.RC3"));
    }

    #[test]
    fn probe_missing_binary_is_zero_cards() {
        let info = probe_npus(Path::new("/nonexistent/npu-smi")).expect("not found is ok");
        assert_eq!(info, NpuSmiInfo::default());
    }

    #[test]
    fn probe_failing_binary_is_an_error() {
        let err = probe_npus(Path::new("/bin/false")).expect_err("exit 1");
        assert!(matches!(err, NpuProbeError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("/bin/false info failed"), "{err}");
    }

    #[test]
    fn probe_runs_a_fake_npu_smi() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = dir.path().join("out.txt");
        std::fs::write(&fixture, F910B4).expect("write");
        let script = dir.path().join("npu-smi");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = info ] && cat '{}'\n",
                fixture.display()
            ),
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let info = probe_npus(&script).expect("runs");
        assert_eq!(info.cards.len(), 1);
        assert_eq!(info.cards.first().map(|c| c.id), Some(2));
    }
}
