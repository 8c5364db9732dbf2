//! Config reload triggers and what a reload may change while serving.
//!
//! A reload is asked for by SIGHUP or by a change of the config file's content (the file is
//! watched through its directory, so the atomic renames of editors and of Kubernetes
//! ConfigMap volumes are seen). The new config is validated by the caller before anything
//! changes; a bad one is logged and counted and the old one keeps running.
//!
//! Owns: the triggers and the list of settings that need a restart. Must not apply a config
//! itself: `main` swaps the parts (listeners, upstream path, query log).

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Why a reload was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The config file's content changed.
    FileChanged,
}

/// How long file events are gathered before a reload: an editor's save is several events.
const SETTLE: Duration = Duration::from_millis(200);

/// Starts the reload triggers: SIGHUP always, the file watch when there is a config file.
/// The watcher lives as long as the returned receiver's task.
pub fn triggers(config_file: Option<PathBuf>) -> mpsc::Receiver<Trigger> {
    let (tx, rx) = mpsc::channel(8);
    // Registered before this returns: from then on SIGHUP reloads instead of killing us.
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if tx.send(Trigger::Signal).await.is_err() {
                        return;
                    }
                }
            });
        }
        Err(error) => warn!(%error, "cannot listen for SIGHUP; reload by editing the config file"),
    }
    if let Some(path) = config_file {
        watch_file(path, tx);
    }
    rx
}

/// Sends [`Trigger::FileChanged`] whenever the file's content differs from what it last was.
/// The watch is in place when this returns, so no change made after it is missed.
fn watch_file(path: PathBuf, tx: mpsc::Sender<Trigger>) {
    use notify::Watcher as _;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = events_tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            warn!(%error, file = %path.display(), "cannot watch the config file; reload with SIGHUP");
            return;
        }
    };
    if let Err(error) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        warn!(%error, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP");
        return;
    }
    let mut last = read(&path);
    tokio::spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        while events.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while events.try_recv().is_ok() {}
            let now = read(&path);
            if now != last && now.is_some() {
                debug!(file = %path.display(), "config file changed");
                last = now;
                if tx.send(Trigger::FileChanged).await.is_err() {
                    return;
                }
            }
        }
    });
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// The settings that differ between `old` and `new` but only take effect after a restart
/// (they shape the zone, the sources or sockets that are not rebound on reload).
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("zone", old.zone != new.zone);
    check("ttl", old.ttl != new.ttl);
    check("pods", old.pods != new.pods);
    check("manifests", old.manifests != new.manifests);
    check(
        "kubernetes",
        format!("{:?}", old.kubernetes) != format!("{:?}", new.kubernetes),
    );
    check("metrics_listen", old.metrics_listen != new.metrics_listen);
    check("health_listen", old.health_listen != new.health_listen);
    check("ready_listen", old.ready_listen != new.ready_listen);
    check("admin_listen", old.admin_listen != new.admin_listen);
    check(
        "server",
        format!("{:?}", old.server) != format!("{:?}", new.server),
    );
    check("log.format", old.log.format != new.log.format);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_that_cannot_change_live_need_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.upstream.max_concurrent = 5;
        new.cache.capacity = 10;
        new.log.queries = true;
        new.lameduck = Duration::from_secs(1);
        new.listen.push("127.0.0.1:5353".parse().expect("addr"));
        assert!(needs_restart(&old, &new).is_empty());
        new.ttl = 30;
        new.zone = "example.local".into();
        new.server.max_udp_payload = 4096;
        assert_eq!(needs_restart(&old, &new), ["zone", "ttl", "server"]);
    }
}
