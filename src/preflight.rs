//! The paths a pipeline will write, checked on disk before anything is created: `weir run
//! --check` reports them with the rest of the file's problems, and `weir run` refuses to start
//! on them, so a checkpoint directory that is a regular file is found before any output or
//! dead letter was written, and named by its config key.
//!
//! Nothing is created or changed here: only `metadata` of the paths and of their nearest
//! existing ancestor.

use std::path::Path;

use crate::config::ValidatedPipeline;
use crate::registry::PathKind as Kind;

/// Every path problem of `cfg`, as `"<key>: <problem>"` lines.
pub fn check(cfg: &ValidatedPipeline) -> Vec<String> {
    let mut paths: Vec<(String, &Path, Kind)> = Vec::new();
    if let Some(dir) = &cfg.checkpoint.dir {
        paths.push(("checkpoint.dir".into(), dir, Kind::Dir));
    }
    for (key, path, kind) in cfg.dlq.component().paths() {
        paths.push((format!("dlq.{key}"), path, kind));
    }
    for (i, s) in cfg.sinks.iter().enumerate() {
        for (key, path, kind) in s.component().paths() {
            paths.push((format!("sinks[{i}].{key}"), path, kind));
        }
    }
    paths
        .into_iter()
        .filter_map(|(key, path, kind)| problem(path, kind).map(|p| format!("{key}: {p}")))
        .collect()
}

/// Why `path` cannot be used as `kind`, if it cannot.
fn problem(path: &Path, kind: Kind) -> Option<String> {
    match (std::fs::metadata(path), kind) {
        (Ok(m), Kind::Dir) if !m.is_dir() => {
            return Some(format!(
                "`{}` exists and is not a directory",
                path.display()
            ))
        }
        (Ok(m), Kind::File) if m.is_dir() => {
            return Some(format!("`{}` is a directory, not a file", path.display()))
        }
        (Ok(_), _) => return None,
        (Err(e), _) if !absent(&e) => return Some(format!("`{}`: {e}", path.display())),
        (Err(_), _) => {}
    }
    // Absent: it will be created inside its nearest existing ancestor, which must be a
    // directory.
    let mut ancestor = path.parent();
    while let Some(a) = ancestor {
        let probe = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => return None,
            Ok(_) => {
                return Some(format!(
                    "`{}` cannot be created: `{}` is not a directory",
                    path.display(),
                    probe.display()
                ))
            }
            Err(e) if !absent(&e) => {
                return Some(format!(
                    "`{}` cannot be created: `{}`: {e}",
                    path.display(),
                    probe.display()
                ))
            }
            Err(_) => ancestor = a.parent(),
        }
    }
    None
}

/// The path does not exist (or an ancestor of it is not a directory, which the ancestor
/// walk then names).
fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_where_a_directory_goes_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(
            problem(&file, Kind::Dir),
            Some(format!(
                "`{}` exists and is not a directory",
                file.display()
            ))
        );
        let below = file.join("checkpoints");
        assert_eq!(
            problem(&below, Kind::Dir),
            Some(format!(
                "`{}` cannot be created: `{}` is not a directory",
                below.display(),
                file.display()
            ))
        );
        assert_eq!(problem(&file, Kind::File), None);
    }

    #[test]
    fn a_directory_where_a_file_goes_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            problem(dir.path(), Kind::File),
            Some(format!(
                "`{}` is a directory, not a file",
                dir.path().display()
            ))
        );
    }

    #[test]
    fn absent_paths_under_a_directory_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(problem(&dir.path().join("a/b/c"), Kind::Dir), None);
        assert_eq!(problem(Path::new("relative-absent"), Kind::File), None);
    }
}
