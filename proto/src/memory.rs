//! Job memory limits (`msctl submit --memory 4G`, job files `memory = "4G"`):
//! the one way a size is written and read, and the bounds every side checks.
//! msctl parses with [`parse`], the scheduler refuses a limit outside
//! [`MIN_LIMIT`]..=[`MAX_LIMIT`] ([`check`]), and the agent names a limit and a
//! peak with [`format`] ("512 MiB").

/// The smallest limit a job may ask for: below it not even the interpreter starts.
pub const MIN_LIMIT: u64 = 16 * MIB;
/// The largest limit a job may ask for (16 TiB).
pub const MAX_LIMIT: u64 = 16 * 1024 * 1024 * MIB;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Bytes from `512M`, `4G`, `1.5GiB`, `4096` (bytes): units are binary
/// (K/KiB, M/MiB, G/GiB, T/TiB, case-insensitive; `B` alone or none is bytes).
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => {
            return Err(format!(
                "memory '{}': unknown unit '{unit}' (use e.g. 512M, 4G)",
                clip(t)
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("memory '{}' is not a size (use e.g. 512M, 4G)", clip(t)))?;
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > MAX_LIMIT as f64 {
        return Err(format!(
            "memory '{}' must be between {} and {}",
            clip(t),
            format(MIN_LIMIT),
            format(MAX_LIMIT)
        ));
    }
    Ok(bytes as u64)
}

/// Why `bytes` is not an acceptable job memory limit.
pub fn check(bytes: u64) -> Result<(), String> {
    if (MIN_LIMIT..=MAX_LIMIT).contains(&bytes) {
        Ok(())
    } else {
        Err(format!(
            "memory limit {} must be between {} and {}",
            format(bytes),
            format(MIN_LIMIT),
            format(MAX_LIMIT)
        ))
    }
}

/// `bytes` in the largest binary unit that keeps it readable: "512 MiB", "1.5 GiB", "900 B".
pub fn format(bytes: u64) -> String {
    let units = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    for (scale, name) in units {
        if bytes >= scale {
            let v = bytes as f64 / scale as f64;
            let text = format!("{v:.1}");
            let text = text.strip_suffix(".0").unwrap_or(&text);
            return format!("{text} {name}");
        }
    }
    format!("{bytes} B")
}

fn clip(t: &str) -> String {
    t.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse("64M"), Ok(64 * MIB));
        assert_eq!(parse("4G"), Ok(4 * GIB));
        assert_eq!(parse("1.5GiB"), Ok(GIB + GIB / 2));
        assert_eq!(parse(" 512 mb "), Ok(512 * MIB));
        assert_eq!(parse("4096"), Ok(4096));
        for bad in ["", "G", "4X", "-1G", "1e3M", "0", "99999T", "4..G"] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn limits_are_bounded_and_named_readably() {
        assert!(check(MIN_LIMIT).is_ok());
        assert!(check(MAX_LIMIT).is_ok());
        assert!(check(MIN_LIMIT - 1).is_err());
        assert!(check(MAX_LIMIT + 1).is_err());
        assert_eq!(format(512 * MIB), "512 MiB");
        assert_eq!(format(GIB + GIB / 2), "1.5 GiB");
        assert_eq!(format(900), "900 B");
        assert_eq!(format(64 * MIB + 12_345), "64 MiB");
    }
}
