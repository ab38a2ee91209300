//! containerd's task API (v2, ttrpc) as a thin adapter over [`TaskService`]: each call maps
//! its request onto the service, publishes the event containerd expects, and turns a
//! [`TaskError`] into a ttrpc status.

use async_trait::async_trait;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use serde_json::Value;

use crate::console;
use crate::policy;
use crate::task::{internal, now, TaskError, TaskService};

fn status(code: Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

impl From<TaskError> for ttrpc::Error {
    fn from(err: TaskError) -> ttrpc::Error {
        let code = match &err {
            TaskError::NotFound(_) => Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            TaskError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            TaskError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            TaskError::ResourceExhausted(_) => Code::RESOURCE_EXHAUSTED,
            TaskError::Unimplemented(_) => Code::UNIMPLEMENTED,
            TaskError::Unknown(_) => Code::UNKNOWN,
            TaskError::Internal(_) => Code::INTERNAL,
        };
        status(code, err.to_string())
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.create_container(&req).await? as u32;
        let io = TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        };
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(io).into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if req.exec_id.is_empty() {
            let pid = self.start_init(&req.id).await? as u32;
            let event = TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event))
                .await;
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        let pid = self.start_exec(&req.id, &req.exec_id).await? as u32;
        let event = TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        self.add_exec(&req).await?;
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.kill_process(&req.id, &req.exec_id, req.signal as i32, req.all)
            .await?;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (process, was_container) = self.delete_process(&req.id, &req.exec_id).await?;
        let (code, at) = process
            .exited()
            .unwrap_or_else(|| (if was_container { 128 + 9 } else { 0 }, now()));
        if was_container {
            let event = TaskDelete {
                container_id: req.id.clone(),
                pid: process.pid as u32,
                exit_status: code,
                exited_at: Some(at.clone()).into(),
                id: req.id.clone(),
                ..Default::default()
            };
            self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(api::DeleteResponse {
            pid: process.pid as u32,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.state.lock().await;
        let container = state.containers.get(&req.id).map_err(TaskError::from)?;
        let process = container.process(&req.exec_id).map_err(TaskError::from)?;
        let (exit_status, exited_at) = match process.exited() {
            Some((code, at)) => (code, Some(at)),
            None => (0, None),
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.clone(),
            pid: process.pid as u32,
            status: process.api_status().into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.wants_terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut exit = {
            let state = self.state.lock().await;
            let process = state.containers.process(&req.id, &req.exec_id);
            process.map_err(TaskError::from)?.subscribe_exit()
        };
        let (code, at) = loop {
            if let Some(done) = exit.borrow_and_update().clone() {
                break done;
            }
            if exit.changed().await.is_err() {
                return Err(TaskError::NotFound("process was deleted".into()).into());
            }
        };
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let cgroup = self.cgroup_of(&req.id).await?;
        let pids = tokio::task::spawn_blocking(move || cgroup.pids().unwrap_or_default())
            .await
            .map_err(internal)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid: pid.as_raw() as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let metrics = self.cgroup_of(&req.id).await?.metrics();
        let (type_url, value) = metrics.encode().map_err(internal)?;
        Ok(api::StatsResponse {
            stats: Some(Any {
                type_url: type_url.to_string(),
                value,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let cgroup = self.cgroup_of(&req.id).await?;
        let invalid = |e: serde_json::Error| TaskError::InvalidArgument(format!("resources: {e}"));
        let mut resources: Value = serde_json::from_slice(&req.resources.value).map_err(invalid)?;
        policy::clamp_resources(&mut resources);
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_value(resources).map_err(invalid)?;
        tokio::task::spawn_blocking(move || cgroup.update(&resources))
            .await
            .map_err(internal)?
            .map_err(|e| TaskError::Unknown(format!("updating resources: {e:#}")))?;
        Ok(api::Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let state = self.state.lock().await;
        let task_pid = state
            .containers
            .get(&req.id)
            .map_or(0, |c| c.init.pid as u32);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        self.shutdown_when_empty().await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let state = self.state.lock().await;
        let process = state.containers.process(&req.id, &req.exec_id);
        if let Some(master) = &process.map_err(TaskError::from)?.terminal {
            console::resize(master, req.width as u16, req.height as u16).map_err(internal)?;
        }
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        // The container holds containerd's stdin FIFO itself; containerd closing its end is
        // what the process sees as end of input.
        let state = self.state.lock().await;
        state
            .containers
            .process(&req.id, &req.exec_id)
            .map_err(TaskError::from)?;
        Ok(api::Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(TaskError::Unimplemented("pause is not supported").into())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(TaskError::Unimplemented("resume is not supported").into())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(TaskError::Unimplemented("checkpoint is not supported").into())
    }
}

impl TaskService {
    async fn cgroup_of(&self, id: &str) -> Result<crate::cgroups::ContainerCgroup, TaskError> {
        Ok(self.state.lock().await.containers.get(id)?.cgroup.clone())
    }
}
