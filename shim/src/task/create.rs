//! Task API Create: a container of the pod, through the hardening policy and the launcher.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentsandbox_contract::{cri, ResponseTaken};
use containerd_shim_protos::api;
use serde_json::Value;

use super::{internal, TaskError, TaskResult, TaskService};
use crate::cgroups::ContainerCgroup;
use crate::console::{self, ConsoleSocket};
use crate::container::{Container, Process};
use crate::egress;
use crate::launcher::{self, CreateRequest, LaunchRequest, StdioPaths};
use crate::pod::PodResources;
use crate::policy::{self, SandboxSettings};
use crate::sys::mounts::{self, IdmapPlan, RootfsMount};

/// A container's state directory, unmounted and removed on drop unless the create succeeded.
struct StateDirGuard {
    path: PathBuf,
    keep: bool,
}

impl Drop for StateDirGuard {
    fn drop(&mut self) {
        if !self.keep {
            mounts::unmount_tree(&self.path);
        }
    }
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn read_bundle_spec(bundle: &Path) -> std::io::Result<Value> {
    let text = std::fs::read_to_string(bundle.join("config.json"))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Creates `dir` with every directory from `root` down traversable (0711) but not listable
/// by others: the container's unprivileged root must reach its rootfs and binds.
fn create_traversable_dir(root: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mut current = Some(dir);
    while let Some(path) = current.filter(|p| p.starts_with(root)) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))?;
        current = path.parent();
    }
    Ok(())
}

/// Creates `dir` (and missing parents) readable by root only.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `path` readable by root only (0600 from its creation, never briefly wider).
pub fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(content)
}

/// The terminal master of a process just launched, attached to its FIFOs.
pub async fn receive_terminal(
    console: ConsoleSocket,
    stdio: &StdioPaths,
) -> TaskResult<Arc<std::os::fd::OwnedFd>> {
    let stdio = stdio.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<std::os::fd::OwnedFd>> {
        let (master, stream) = console.receive_master(std::time::Duration::from_secs(10))?;
        console::attach(&master, &stdio.stdin, &stdio.stdout)?;
        console::acknowledge(stream);
        Ok(Arc::new(master))
    })
    .await
    .map_err(internal)?
    .map_err(|e| TaskError::Unknown(format!("terminal: {e:#}")))
}

impl TaskService {
    /// The egress rules for the pod's first application container (a pod that carries no
    /// egress policy gets none: no egress).
    fn egress_rules(
        spec: &Value,
        policy: &agentsandbox_contract::EgressPolicy,
    ) -> TaskResult<(egress::EgressRules, String)> {
        let resolv_conf = spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .and_then(|m| m["source"].as_str())
            .and_then(|source| launcher::read_optional(Path::new(source)))
            .unwrap_or_default();
        let rules = egress::render(policy, &egress::nameservers(&resolv_conf))
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        Ok((rules, resolv_conf))
    }

    /// Starts the pod's resolver (before its first application container exists) when its
    /// egress table redirects DNS to it.
    pub(crate) fn start_resolver(
        &self,
        pod: &crate::pod::Pod,
        policy: &agentsandbox_contract::EgressPolicy,
        resolv_conf: &str,
        container: &str,
    ) -> TaskResult<crate::dns::Resolver> {
        let netns = pod.netns.as_ref().ok_or_else(|| {
            TaskError::FailedPrecondition(
                "the pod's network namespace is unknown: its DNS cannot be filtered".into(),
            )
        })?;
        let upstream = egress::nameservers(resolv_conf)
            .into_iter()
            .next()
            .ok_or_else(|| TaskError::FailedPrecondition("the pod has no nameserver".into()))?;
        crate::dns::Resolver::start(
            netns,
            upstream,
            policy.clone(),
            egress::search_domains(resolv_conf),
            self.telemetry.clone(),
            container.to_string(),
        )
        .map_err(|e| TaskError::Unknown(format!("the pod's resolver: {e:#}")))
    }

    pub async fn create_container(&self, req: &api::CreateTaskRequest) -> TaskResult<i32> {
        if !req.checkpoint.is_empty() {
            return Err(TaskError::Unimplemented(
                "checkpoint/restore is not supported",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = read_bundle_spec(&bundle).map_err(internal)?;
        let annotations = string_map(&spec["annotations"]);
        let is_sandbox =
            annotations.get(cri::CONTAINER_TYPE).map(String::as_str) == Some("sandbox");
        let pod_key = annotations
            .get(cri::SANDBOX_ID)
            .cloned()
            .unwrap_or_else(|| req.id.clone());

        // Everything that can refuse the container comes before the pod's id range is
        // claimed. The egress rules read the pod's resolv.conf before mounts are staged.
        policy::check_refusals(&spec, &req.id)
            .map_err(|e| TaskError::FailedPrecondition(e.to_string()))?;
        if let Some(applied) = self.state.lock().await.pod.response_applied {
            return Err(TaskError::FailedPrecondition(format!(
                "the sandbox was {} after an escape attempt: no new container starts in this pod",
                if applied == ResponseTaken::Killed {
                    "killed"
                } else {
                    "quarantined"
                }
            )));
        }
        let pod_policy = self.learn_pod(&spec, &annotations, is_sandbox).await?;
        let container_name = annotations
            .get(cri::CONTAINER_NAME)
            .map(String::as_str)
            .unwrap_or_default();
        let warm = pod_policy.warm
            && !is_sandbox
            && container_name == agentsandbox_contract::handoff::AGENT_CONTAINER;
        let waiter = match warm {
            true => Some(crate::handoff::waiter_on_node()?),
            false => None,
        };
        let mut pod_resolv_conf = String::new();
        let (egress, user_namespace, claimed) = {
            let mut state = self.state.lock().await;
            let egress = if is_sandbox || state.pod.egress_installed {
                None
            } else {
                let (rules, resolv_conf) = Self::egress_rules(&spec, &pod_policy.egress)?;
                pod_resolv_conf = resolv_conf.clone();
                if rules.resolver && state.pod.resolver.is_none() {
                    let container = annotations
                        .get(cri::CONTAINER_NAME)
                        .map(String::as_str)
                        .unwrap_or(&req.id);
                    state.pod.resolver = Some(self.start_resolver(
                        &state.pod,
                        &pod_policy.egress,
                        &resolv_conf,
                        container,
                    )?);
                }
                Some(rules)
            };
            // The pod's first container claims its id range; the guard gives it back if this
            // create fails.
            let claimed = match &state.pod.resources {
                Some(_) => None,
                None => Some(
                    PodResources::claim(&self.state_root, &pod_key, std::process::id())
                        .map_err(|e| TaskError::ResourceExhausted(e.to_string()))?,
                ),
            };
            let resources = claimed
                .as_ref()
                .or(state.pod.resources.as_ref())
                .expect("claimed above");
            let user_namespace = (resources.user_namespace().to_path_buf(), resources.range());
            state.pod.egress_installed |= egress.is_some();
            (egress, user_namespace, claimed)
        };
        let (user_namespace, range) = user_namespace;

        let mut settings = SandboxSettings::for_container(
            &pod_policy,
            annotations
                .get(cri::CONTAINER_NAME)
                .map(String::as_str)
                .unwrap_or_default(),
        );
        settings.container_id = req.id.clone();
        settings.user_namespace = Some(user_namespace.to_string_lossy().into_owned());
        settings.notify_socket = self
            .notify
            .as_ref()
            .map(|n| n.path.to_string_lossy().into_owned());
        let hardened = policy::apply_hardening(&mut spec, &settings)
            .map_err(|e| TaskError::FailedPrecondition(e.to_string()));
        if let (Ok(()), Some(waiter)) = (&hardened, &waiter) {
            crate::handoff::run_waiter(&mut spec, waiter);
        }
        let installing_egress = egress.is_some();
        let result = match hardened {
            Ok(()) => {
                self.launch_container(
                    req,
                    spec,
                    egress,
                    &user_namespace,
                    range,
                    claimed.is_some(),
                    is_sandbox || !annotations.contains_key(cri::SANDBOX_ID),
                    waiter.as_deref(),
                )
                .await
            }
            Err(err) => Err(err),
        };
        match result {
            Ok((pid, warm_stdin)) => {
                let mut state = self.state.lock().await;
                if let Some(resources) = claimed {
                    state.pod.resources = Some(resources);
                }
                if let Some(writer) = warm_stdin {
                    let pod_uid = annotations
                        .get(cri::SANDBOX_UID)
                        .cloned()
                        .unwrap_or_default();
                    let socket = crate::handoff::socket_dir().join(format!("{pod_uid}.sock"));
                    let listener = crate::handoff::listen(self.clone(), &socket).map_err(|e| {
                        TaskError::Internal(format!(
                            "the pod's handoff socket {}: {e}",
                            socket.display()
                        ))
                    })?;
                    state.pod.warm = Some(crate::handoff::WarmMember {
                        pod_uid,
                        writer: Some(writer),
                        taken: false,
                        resolv_conf: pod_resolv_conf,
                        container: container_name.to_string(),
                        socket,
                        listener: Some(listener),
                    });
                    tracing::info!(container = %req.id, "warm pool member: the agent waits for its claim");
                }
                Ok(pid)
            }
            Err(err) => {
                if installing_egress {
                    self.state.lock().await.pod.egress_installed = false;
                }
                Err(err)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn launch_container(
        &self,
        req: &api::CreateTaskRequest,
        mut spec: Value,
        egress: Option<egress::EgressRules>,
        user_namespace: &Path,
        range: crate::idmap::IdRange,
        pin_user_namespace: bool,
        is_sandbox: bool,
        waiter: Option<&Path>,
    ) -> TaskResult<(i32, Option<std::fs::File>)> {
        let joins = policy::take_namespace_joins(&mut spec);
        // Everything the container's (unprivileged) root must reach lives below its state
        // directory, whose parents it may traverse but not list.
        let state_dir = self.container_dir(&req.id);
        let mut state_dir_guard = StateDirGuard {
            path: state_dir.clone(),
            keep: false,
        };
        let rootfs_target = state_dir.join("rootfs");
        create_traversable_dir(&self.state_root, &rootfs_target).map_err(internal)?;
        spec["root"]["path"] = Value::String(rootfs_target.to_string_lossy().into_owned());
        let mut binds = mounts::stage_binds(&mut spec, &state_dir.join("mounts"));
        let mut launch_stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        let warm_stdin = match waiter {
            Some(waiter) => {
                let waiter = waiter.to_string_lossy();
                for bind in binds.iter_mut().filter(|b| b.source == waiter) {
                    bind.idmap = false;
                }
                let fifo = state_dir.join("handoff.fifo");
                let writer = crate::handoff::open_stdin_fifo(&fifo).map_err(internal)?;
                launch_stdio.stdin = fifo.to_string_lossy().into_owned();
                Some(writer)
            }
            None => None,
        };
        let cgroup =
            ContainerCgroup::new(spec["linux"]["cgroupsPath"].as_str().unwrap_or_default());
        // The hardened spec holds the pod's environment (secrets included): root only.
        let my_bundle = state_dir.join("bundle");
        private_dir(&my_bundle)
            .and_then(|_| {
                write_private(
                    &my_bundle.join("config.json"),
                    &serde_json::to_vec(&spec).map_err(std::io::Error::other)?,
                )
            })
            .map_err(internal)?;

        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        let mut rootfs: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fs_type: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        if rootfs.is_empty() {
            // containerd mounted the root filesystem in the bundle itself.
            rootfs.push(RootfsMount {
                fs_type: "bind".into(),
                source: Path::new(&req.bundle)
                    .join("rootfs")
                    .to_string_lossy()
                    .into_owned(),
                options: vec!["rbind".into()],
            });
        }
        let console = match req.terminal {
            true => Some(ConsoleSocket::bind(&self.notify_dir()).map_err(internal)?),
            false => None,
        };
        let request = CreateRequest {
            console_socket: console.as_ref().map(|c| c.path.clone()),
            id: req.id.clone(),
            pin_user_namespace: pin_user_namespace
                .then(|| (user_namespace.to_path_buf(), (range.host_start, range.size))),
            root: self.libcontainer_root(),
            bundle: my_bundle,
            stdio: launch_stdio,
            joins,
            rootfs,
            rootfs_target,
            idmap: Some(IdmapPlan {
                user_namespace: user_namespace.to_path_buf(),
                host_root: range.host_start,
                staging: state_dir.join("layers"),
            }),
            binds,
            state_dir: state_dir.clone(),
            egress,
        };
        let pid = self
            .run_launcher(LaunchRequest::Create(Box::new(request)))
            .await?;
        let terminal = match console {
            Some(console) => Some(receive_terminal(console, &stdio).await?),
            None => None,
        };
        state_dir_guard.keep = true;
        let container = Container {
            bundle: req.bundle.clone(),
            state_dir,
            cgroup: cgroup.clone(),
            is_sandbox,
            init: Process::new(stdio, req.terminal),
            execs: HashMap::new(),
        };
        self.state
            .lock()
            .await
            .containers
            .insert_created(&req.id, container, pid);
        self.register_running(&req.id, "", pid, terminal).await;
        tracing::info!(container = %req.id, pid, sandbox = is_sandbox, "container created");
        self.watch_oom(&req.id, &cgroup);
        Ok((pid, warm_stdin))
    }
}
