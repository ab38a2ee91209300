//! The node agent as the runtime's installer (`agentsandbox-node install`, the DaemonSet's
//! init container), the way kata-deploy and KWasm install theirs: copy the shim onto the
//! node, add the containerd runtime stanza (idempotently, in a marked block, the original
//! kept as a backup), restart containerd when its configuration changed, label the node.
//! Planning the configuration is pure; the file and process edges are thin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The node label the RuntimeClass schedules sandboxes by.
pub const NODE_LABEL: &str = "agentsandbox.io/runtime";
pub const NODE_LABEL_VALUE: &str = "installed";
/// Suffix of the containerd configuration's backup (written once, before the first change).
pub const BACKUP_SUFFIX: &str = ".agentsandbox.bak";
pub const SHIM_NAME: &str = "containerd-shim-agentsandbox-v1";
/// The shim's launcher binary (the pod's zygote), installed next to the shim.
pub const LAUNCHER_NAME: &str = "agentsandbox-launcher";
const BLOCK_BEGIN: &str =
    "# BEGIN agentsandbox runtime (managed by agentsandbox-node; edits inside are overwritten)";
const BLOCK_END: &str = "# END agentsandbox runtime";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "containerd configuration version {0} is not supported: agentsandbox needs version 2 \
         (containerd 1.x), 3 or 4 (containerd 2.x); run `containerd config migrate`"
    )]
    UnsupportedConfigVersion(i64),
    #[error(
        "the containerd configuration already defines the runtime `{0}` outside agentsandbox's \
         managed block; remove that stanza (or choose another runtimeClass.handler)"
    )]
    ForeignStanza(String),
    #[error("the containerd configuration's managed block is not closed by `{BLOCK_END}`")]
    UnclosedBlock,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("restarting containerd: {0}")]
    Restart(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The `version = N` of a containerd configuration (1 when absent, as containerd reads it).
pub fn config_version(config: &str) -> i64 {
    for line in config.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        if let Some(value) = line
            .strip_prefix("version")
            .map(str::trim_start)
            .and_then(|l| l.strip_prefix('='))
        {
            return value
                .split('#')
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1);
        }
    }
    1
}

/// The managed block for `handler` in a configuration of `version`.
pub fn runtime_block(version: i64, handler: &str) -> Result<String, InstallError> {
    let plugin = match version {
        2 => "io.containerd.grpc.v1.cri",
        // containerd 2.0-2.3 write version 3, 2.4 writes 4: the CRI runtime plugin is the same.
        3 | 4 => "io.containerd.cri.v1.runtime",
        other => return Err(InstallError::UnsupportedConfigVersion(other)),
    };
    Ok(format!(
        "{BLOCK_BEGIN}\n\
         # The agentsandbox runtime: RuntimeClass handler \"{handler}\" -> {SHIM_NAME}; the pod\n\
         # annotations the operator writes (egress policy, isolation profile, response policy)\n\
         # reach the shim.\n\
         [plugins.\"{plugin}\".containerd.runtimes.{handler}]\n  \
         runtime_type = \"io.containerd.agentsandbox.v1\"\n  \
         pod_annotations = [\"agentsandbox.io/*\"]\n\
         {BLOCK_END}\n"
    ))
}

/// The first `imports` entry of a configuration that names `*.toml` files in a directory
/// (containerd 2.x's default `imports = ['/etc/containerd/conf.d/*.toml']`).
pub fn import_dir(config: &str) -> Option<PathBuf> {
    let line = config
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .find(|l| l.starts_with("imports") && l.contains('='))?;
    let list = line.split_once('=')?.1;
    list.split(',')
        .map(|entry| {
            entry
                .trim()
                .trim_matches(|c| matches!(c, '[' | ']' | '"' | '\'' | ' '))
        })
        .find_map(|entry| entry.strip_suffix("/*.toml").map(PathBuf::from))
}

/// Where the runtime stanza goes: a drop-in file when the configuration imports a directory
/// below its own (`host_dir`, the configuration's directory on the node, is what is mounted
/// here as `mounted_dir`), so the node's own file is never edited; else the file itself.
/// Only containerd 2.x (configuration version 3 and up) merges an imported plugin section
/// into the main one: containerd 1.x replaces the whole section with the imported one, so a
/// drop-in with only the runtime would drop every other CRI setting (its default runtime
/// included; the version matrix found this). Version 2 configurations are edited in place.
pub fn stanza_target(config: &str, host_dir: &Path, mounted_dir: &Path) -> Option<PathBuf> {
    if config_version(config) < 3 {
        return None;
    }
    let dir = import_dir(config)?;
    let relative = dir.strip_prefix(host_dir).ok()?;
    Some(mounted_dir.join(relative).join(DROP_IN_NAME))
}

/// The drop-in file's name in containerd's imports directory.
pub const DROP_IN_NAME: &str = "agentsandbox.toml";

/// The drop-in file with the runtime stanza for `handler`, for a main configuration of
/// `version`.
pub fn drop_in(version: i64, handler: &str) -> Result<String, InstallError> {
    Ok(format!(
        "version = {version}\n\n{}",
        runtime_block(version, handler)?
    ))
}

/// The configuration with the runtime stanza for `handler`, or None when it already is
/// exactly that (nothing to write, nothing to restart).
pub fn plan_config(existing: &str, handler: &str) -> Result<Option<String>, InstallError> {
    let block = runtime_block(config_version(existing), handler)?;
    if let Some(start) = existing.find(BLOCK_BEGIN) {
        let end = existing[start..]
            .find(BLOCK_END)
            .map(|e| start + e + BLOCK_END.len())
            .ok_or(InstallError::UnclosedBlock)?;
        let end = if existing[end..].starts_with('\n') {
            end + 1
        } else {
            end
        };
        if existing[start..end] == block {
            return Ok(None);
        }
        let outside = format!("{}{}", &existing[..start], &existing[end..]);
        check_no_foreign_stanza(&outside, handler)?;
        return Ok(Some(format!(
            "{}{block}{}",
            &existing[..start],
            &existing[end..]
        )));
    }
    check_no_foreign_stanza(existing, handler)?;
    let separator = if existing.is_empty() || existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    Ok(Some(format!("{existing}{separator}{block}")))
}

fn check_no_foreign_stanza(config: &str, handler: &str) -> Result<(), InstallError> {
    let table = format!(".containerd.runtimes.{handler}]");
    let quoted = format!(".containerd.runtimes.\"{handler}\"]");
    if config
        .lines()
        .map(str::trim)
        .any(|l| l.starts_with('[') && (l.ends_with(&table) || l.ends_with(&quoted)))
    {
        return Err(InstallError::ForeignStanza(handler.to_string()));
    }
    Ok(())
}

/// Writes `content` to `path` atomically (a temporary file in the same directory, renamed),
/// with `mode`.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.agentsandbox-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(content).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))
}

/// Copies the shim into `bin_dir` unless the same bytes are there. Replaced by rename, so
/// running shims keep their (old) binary. Returns whether it changed.
pub fn install_shim(source: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    install_binary(source, bin_dir, SHIM_NAME)
}

/// Copies the shim's launcher (`agentsandbox-launcher`, the pod's zygote, which the shim looks
/// for next to itself) into `bin_dir`, as [`install_shim`] does. Installed before the shim,
/// so that a shim never runs without the launcher it was built with or a newer one.
pub fn install_launcher(source: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    install_binary(source, bin_dir, LAUNCHER_NAME)
}

/// Copies the warm-pool waiter (`agentsandbox-wait`, which the shim runs in a warm member's
/// agent container) next to the shim, as [`install_shim`] does.
pub fn install_waiter(source: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    install_binary(source, bin_dir, agentsandbox_contract::handoff::WAITER_NAME)
}

fn install_binary(source: &Path, bin_dir: &Path, name: &str) -> Result<bool, InstallError> {
    let wanted = std::fs::read(source).map_err(io("reading", source))?;
    let target = bin_dir.join(name);
    if std::fs::read(&target).is_ok_and(|present| present == wanted) {
        return Ok(false);
    }
    std::fs::create_dir_all(bin_dir).map_err(io("creating", bin_dir))?;
    write_atomically(&target, &wanted, 0o755)?;
    Ok(true)
}

fn read_optional(path: &Path) -> Result<String, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// Adds the runtime stanza to the containerd configuration at `path`: as a drop-in file in
/// its imports directory when it has one below `host_dir` (the configuration's directory on
/// the node), else in the file itself (keeping the first version it changed as
/// `<path>.agentsandbox.bak`). Returns whether anything changed.
pub fn install_config(path: &Path, host_dir: &Path, handler: &str) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let existing = read_optional(path)?;
    let mounted_dir = path.parent().unwrap_or(Path::new("/"));
    if let Some(target) = stanza_target(&existing, host_dir, mounted_dir) {
        check_no_foreign_stanza(&existing, handler)?;
        let wanted = drop_in(config_version(&existing), handler)?;
        if read_optional(&target)? == wanted {
            return Ok(false);
        }
        let dir = target.parent().unwrap_or(mounted_dir);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        write_atomically(&target, wanted.as_bytes(), 0o644)?;
        return Ok(true);
    }
    let Some(planned) = plan_config(&existing, handler)? else {
        return Ok(false);
    };
    let backup = PathBuf::from(format!("{}{BACKUP_SUFFIX}", path.display()));
    if !backup.exists() && !existing.is_empty() {
        write_atomically(&backup, existing.as_bytes(), 0o600)?;
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomically(path, planned.as_bytes(), mode)?;
    Ok(true)
}

/// How containerd is restarted after its configuration changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Never (the operator of the node restarts it).
    None,
    /// Run this command (e.g. `nsenter --target 1 --mount -- systemctl restart containerd`).
    Command(Vec<String>),
    /// Create this file and wait until the node's service manager removes it (e.g. a systemd
    /// path unit that restarts containerd).
    RequestFile(PathBuf),
}

/// Restarts containerd the configured way, waiting at most `timeout`.
pub fn restart_containerd(restart: &Restart, timeout: Duration) -> Result<(), InstallError> {
    match restart {
        Restart::None => Ok(()),
        Restart::Command(argv) => {
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| InstallError::Restart("empty command".into()))?;
            let output = std::process::Command::new(program)
                .args(args)
                .output()
                .map_err(|e| InstallError::Restart(format!("running {program}: {e}")))?;
            if !output.status.success() {
                return Err(InstallError::Restart(format!(
                    "{} exited with {}: {}",
                    argv.join(" "),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            Ok(())
        }
        Restart::RequestFile(path) => {
            std::fs::write(
                path,
                b"restart containerd: agentsandbox runtime installed\n",
            )
            .map_err(io("creating", path))?;
            let deadline = Instant::now() + timeout;
            while path.exists() {
                if Instant::now() >= deadline {
                    return Err(InstallError::Restart(format!(
                        "{} was not removed within {timeout:?}: nothing restarted containerd",
                        path.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        }
    }
}
