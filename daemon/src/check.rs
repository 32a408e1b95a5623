//! `xlbd check` / `xlb check`: validate config files the way the daemon would, without touching
//! the kernel. The Maglev tables are built too, so a file that passes will load.

use std::{io::Write, path::Path};

use crate::{config::Config, state::DesiredState};

/// Validates each file, printing `FILE: ok (...)` or one line per problem. Returns whether all
/// files are valid.
pub fn check_files(paths: &[impl AsRef<Path>], out: &mut impl Write, err: &mut impl Write) -> bool {
    let mut all_ok = true;
    for path in paths {
        let path = path.as_ref();
        match check_one(path) {
            Ok(summary) => {
                let _ = writeln!(out, "{}: ok ({summary})", path.display());
            }
            Err(lines) => {
                all_ok = false;
                for line in lines {
                    let _ = writeln!(err, "{line}");
                }
            }
        }
    }
    all_ok
}

fn check_one(path: &Path) -> Result<String, Vec<String>> {
    let config = Config::load(path).map_err(|error| match error.diagnostics() {
        // An I/O error names the file itself.
        [] => vec![error.to_string()],
        diagnostics => diagnostics.iter().map(ToString::to_string).collect(),
    })?;
    DesiredState::from_config(&config)
        .map_err(|error| vec![format!("{}: {error}", path.display())])?;
    let backends: usize = config.vips.iter().map(|v| v.backends.len()).sum();
    Ok(format!(
        "interface {}, {} VIPs, {} backends",
        config.interface.name,
        config.vips.len(),
        backends
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_pass_and_a_broken_one_fails_with_positions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut shipped: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        shipped.sort();
        assert!(shipped.len() >= 3);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(
            check_files(&shipped, &mut out, &mut err),
            "{}",
            String::from_utf8_lossy(&err)
        );
        assert_eq!(
            String::from_utf8(out).unwrap().lines().count(),
            shipped.len()
        );

        let bad = std::env::temp_dir().join(format!("xlb-check-{}.toml", std::process::id()));
        std::fs::write(&bad, "[interface]\nname = \"eth0\"\ncolour = \"blue\"\n").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert!(!check_files(&[&bad], &mut out, &mut err));
        let err = String::from_utf8(err).unwrap();
        std::fs::remove_file(&bad).unwrap();
        assert!(
            err.contains(":3:1:"),
            "line and column of the unknown key: {err}"
        );
        assert!(err.contains("colour"), "{err}");
        assert!(out.is_empty());
    }
}
