//! `process`: a "server" is a local process — typically `drover-agent consume …`, so the
//! local stack gets a real agent per Compute instance.
//!
//! The process table is the cloud: each process carries its tags in its environment
//! (`DROVER_CLOUD`, `DROVER_DEPLOYMENT_ID`, `DROVER_NODE_INSTANCE_ID`), and listing reads them
//! back from `/proc/<pid>/environ`. So, as with cloud metadata, nothing is kept on the side
//! that a crash could lose: a create finds the process already running for its key and adopts
//! it, and a delete kills whatever carries the key in its deployment. The server id is the pid, its address
//! 127.0.0.1. Linux only (it reads `/proc`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::driver::{CloudDriver, CloudError, DriverFuture, Server, ServerKey, ServerSpec};

const ENV_CLOUD: &str = "DROVER_CLOUD";
const ENV_DEPLOYMENT: &str = "DROVER_DEPLOYMENT_ID";
const ENV_NODE_INSTANCE: &str = "DROVER_NODE_INSTANCE_ID";
/// Every process server's address.
const LOCALHOST: &str = "127.0.0.1";
/// How long a new process may take to exec (and show its tags).
const EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// Local processes as servers.
pub struct ProcessCloud {
    /// Tells this cloud's processes from another's (and from anything else running).
    name: String,
    program: PathBuf,
    args: Vec<String>,
    /// How long a process gets to exit after SIGTERM before SIGKILL.
    grace: Duration,
    /// Creations one at a time, so two creates of one key cannot both spawn.
    creating: Mutex<()>,
}

impl ProcessCloud {
    /// Servers of cloud `name` run `program args…`.
    pub fn new(name: &str, program: PathBuf, args: Vec<String>) -> Self {
        ProcessCloud {
            name: name.to_owned(),
            program,
            args,
            grace: Duration::from_secs(5),
            creating: Mutex::new(()),
        }
    }

    /// Every live process of this cloud.
    fn processes(&self) -> Result<Vec<Server>, CloudError> {
        let proc_dir = std::fs::read_dir("/proc")
            .map_err(|e| CloudError::Permanent(format!("reading /proc: {e}")))?;
        Ok(proc_dir
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| self.server(pid))
            .collect())
    }

    /// The server process `pid` is, if it is one of this cloud's: its environment carries the
    /// tags. Until its exec, a new process still has its spawner's environment.
    fn server(&self, pid: u32) -> Option<Server> {
        // Processes we may not read or that exited meanwhile are not ours to list.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        if is_zombie(pid) {
            return None;
        }
        let env: BTreeMap<String, String> = environ
            .split(|&b| b == 0)
            .filter_map(|var| {
                let var = std::str::from_utf8(var).ok()?;
                let (k, v) = var.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect();
        if env.get(ENV_CLOUD) != Some(&self.name) {
            return None;
        }
        let deployment = env.get(ENV_DEPLOYMENT)?;
        let key = env.get(ENV_NODE_INSTANCE)?;
        Some(Server::tagged(
            pid.to_string(),
            key,
            deployment,
            LOCALHOST.into(),
        ))
    }

    async fn spawn(&self, spec: &ServerSpec) -> Result<Server, CloudError> {
        let child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env(ENV_CLOUD, &self.name)
            .env(ENV_DEPLOYMENT, &spec.deployment_id)
            .env(ENV_NODE_INSTANCE, &spec.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C to the provisioner does not take servers down.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                CloudError::Permanent(format!("starting {}: {e}", self.program.display()))
            })?;
        let pid = child
            .id()
            .ok_or_else(|| CloudError::Transient("the process exited at once".into()))?;
        // Dropped, the child keeps running; tokio reaps it when it exits.
        drop(child);
        // Made once a list can see it, so a create right after adopts it instead of starting
        // a second one.
        let deadline = Instant::now() + EXEC_TIMEOUT;
        loop {
            if let Some(server) = self.server(pid) {
                return Ok(server);
            }
            if !alive(pid as libc::pid_t) {
                return Err(CloudError::Transient("the process exited at once".into()));
            }
            if Instant::now() >= deadline {
                self.kill(pid).await?;
                return Err(CloudError::Transient(format!(
                    "process {pid} did not start {} within {EXEC_TIMEOUT:?}",
                    self.program.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, then SIGKILL after the grace period; a process already gone is fine.
    async fn kill(&self, pid: u32) -> Result<(), CloudError> {
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| CloudError::Permanent(format!("pid {pid} out of range")))?;
        let deadline = Instant::now() + self.grace;
        // SAFETY: kill(2) with a pid read from /proc and a valid signal has no memory effects.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while alive(pid) {
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

fn alive(pid: libc::pid_t) -> bool {
    u32::try_from(pid)
        .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p))
}

/// A process that exited but was not reaped yet (state `Z` in `/proc/<pid>/stat`).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            let after = &stat[stat.rfind(')')? + 1..];
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(true)
}

impl CloudDriver for ProcessCloud {
    fn max_batch(&self) -> usize {
        100
    }

    fn create_servers<'a>(
        &'a self,
        specs: &'a [ServerSpec],
    ) -> DriverFuture<'a, Vec<Result<Server, CloudError>>> {
        Box::pin(async move {
            let _one_at_a_time = self.creating.lock().await;
            let existing = self.processes()?;
            let mut results = Vec::with_capacity(specs.len());
            for spec in specs {
                let adopted = existing
                    .iter()
                    .find(|s| s.key == spec.key && s.deployment_id == spec.deployment_id);
                results.push(match adopted {
                    Some(server) => Ok(server.clone()),
                    None => self.spawn(spec).await,
                });
            }
            Ok(results)
        })
    }

    fn delete_servers<'a>(
        &'a self,
        keys: &'a [ServerKey],
    ) -> DriverFuture<'a, Vec<Result<(), CloudError>>> {
        Box::pin(async move {
            let existing = self.processes()?;
            let mut results = Vec::with_capacity(keys.len());
            for key in keys {
                let mut result = Ok(());
                for server in existing.iter().filter(|s| key.owns(s)) {
                    let pid = server.id.parse().unwrap_or_default();
                    if let Err(e) = self.kill(pid).await {
                        result = Err(e);
                    }
                }
                results.push(result);
            }
            Ok(results)
        })
    }

    fn list_servers<'a>(&'a self, deployment_id: Option<&'a str>) -> DriverFuture<'a, Vec<Server>> {
        Box::pin(async move {
            Ok(self
                .processes()?
                .into_iter()
                .filter(|s| deployment_id.is_none_or(|d| s.deployment_id == d))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str) -> ServerSpec {
        ServerSpec::new(key, "d")
    }

    #[tokio::test]
    async fn processes_are_tagged_adopted_listed_and_killed() {
        // A name of its own, so parallel tests and other runs do not see each other's.
        let name = format!("test-{}", std::process::id());
        let cloud = ProcessCloud::new(&name, "sleep".into(), vec!["600".into()]);
        let made = cloud.create_servers(&[spec("a"), spec("b")]).await.unwrap();
        let again = cloud.create_servers(&[spec("a"), spec("c")]).await.unwrap();
        assert_eq!(made[0], again[0], "a was adopted, not started twice");
        let mut listed: Vec<String> = cloud
            .list_servers(Some("d"))
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect();
        listed.sort();
        assert_eq!(listed, ["a", "b", "c"]);
        // The same node instance id in another deployment is another server.
        let other = cloud
            .create_servers(&[ServerSpec::new("a", "d2")])
            .await
            .unwrap();
        assert_ne!(made[0], other[0]);
        let keys = ["a", "b", "c", "never-made"].map(|k| ServerKey::new(k, "d"));
        let deleted = cloud.delete_servers(&keys).await.unwrap();
        assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
        let left = cloud.list_servers(None).await.unwrap();
        assert_eq!(left, [other[0].clone().unwrap()], "d2's a is left");
        let deleted = cloud
            .delete_servers(&[ServerKey::new("a", "d2")])
            .await
            .unwrap();
        assert!(deleted[0].is_ok());
        assert!(cloud.list_servers(None).await.unwrap().is_empty());
        let pid: u32 = made[0].as_ref().unwrap().id.parse().unwrap();
        assert!(!alive(pid as libc::pid_t));
    }
}
