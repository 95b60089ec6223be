//! `--pid-file PATH`: the process id of the process that serves (the supervisor's under
//! `--processes`), so that scripts can signal it (`kill -TERM $(cat PATH)`).
//!
//! The file is written whole under a temporary name and renamed into place, so that a reader
//! never sees it empty or half-written. It is removed at exit only while it still names this
//! process: a file that another process has rewritten since is left alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The pid file of this process; removed when dropped (see the module docs).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    contents: String,
}

impl PidFile {
    /// Writes this process's id to `path`, replacing what was there.
    ///
    /// # Errors
    /// When the file cannot be written or renamed into place.
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        let contents = format!("{pid}\n");
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{pid}.tmp"));
        let temporary = PathBuf::from(temporary);
        fs::write(&temporary, &contents)
            .and_then(|()| fs::rename(&temporary, path))
            .inspect_err(|_| {
                let _ = fs::remove_file(&temporary);
            })?;
        Ok(PidFile {
            path: path.to_owned(),
            contents,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if fs::read_to_string(&self.path).is_ok_and(|now| now == self.contents) {
            let _ = fs::remove_file(&self.path);
        }
    }
}
