//! The reconciler against a mocked API server: each test scripts the API server's answers in
//! the order the reconciler asks, and asserts on the requests it made. Events are answered
//! whenever they come and recorded. Seconds, no cluster: the e2e tests prove the same on a
//! real one.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use agentsandbox_operator::api::AgentSandbox;
use agentsandbox_operator::controller::{reconcile, Context, FINALIZER};
use agentsandbox_operator::metrics::Metrics;
use agentsandbox_operator::resources::OperatorSettings;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One scripted answer: the request must have this method and a path ending in `path`.
struct Answer {
    method: Method,
    path: &'static str,
    status: StatusCode,
    body: Value,
}

fn answer(method: Method, path: &'static str, status: u16, body: Value) -> Answer {
    Answer {
        method,
        path,
        status: StatusCode::from_u16(status).unwrap(),
        body,
    }
}

/// The NetworkPolicy apply and the Service delete every running sandbox gets first.
fn policy_and_no_service() -> [Answer; 2] {
    [
        answer(
            Method::PATCH,
            "/namespaces/agents/networkpolicies/coder",
            200,
            json!({}),
        ),
        answer(
            Method::DELETE,
            "/namespaces/agents/services/coder",
            404,
            not_found(),
        ),
    ]
}

/// The sandbox's namespace, read because the sandbox leaves its user to it (`user: Auto`).
fn namespace(labels: Value) -> Answer {
    answer(
        Method::GET,
        "/api/v1/namespaces/agents",
        200,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "agents", "labels": labels}}),
    )
}

/// A new sandbox in a namespace labelled `labels`: no pod yet, its policy, the pod created,
/// the status written.
fn pod_created(sandbox: &AgentSandbox, labels: Value) -> Vec<Answer> {
    let mut script = vec![
        namespace(labels),
        answer(Method::GET, "/pods/coder", 404, not_found()),
    ];
    script.extend(policy_and_no_service());
    script.push(answer(
        Method::POST,
        "/namespaces/agents/pods",
        201,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "coder", "namespace": "agents", "uid": "pod-1"}}),
    ));
    script.push(status_write(sandbox));
    script
}

/// The status write that ends every apply.
fn status_write(sandbox: &AgentSandbox) -> Answer {
    answer(
        Method::PATCH,
        "/namespaces/agents/agentsandboxes/coder/status",
        200,
        with_status(sandbox),
    )
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// A request the reconciler made.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

/// The mocked API server, serving until every client is dropped.
struct MockApi {
    seen: Arc<Mutex<Vec<Seen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl MockApi {
    /// The requests made, once the server has checked that the whole script was asked for
    /// (a failed check fails the test here).
    async fn finish(self) -> Vec<Seen> {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.server)
            .await
            .expect("every client was dropped")
            .expect("the mock API server's checks passed");
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `script` in order (events apart) until the reconciler stops asking.
fn mock_api(script: Vec<Answer>) -> (Client, MockApi) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let server = tokio::spawn(async move {
        let mut script: VecDeque<Answer> = script.into();
        while let Some((request, respond)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            recorded.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                body: body.clone(),
            });
            let (status, reply) = if path.contains("/events") {
                (StatusCode::CREATED, body)
            } else {
                let next = script
                    .pop_front()
                    .unwrap_or_else(|| panic!("unexpected request {method} {path}"));
                assert_eq!(
                    (&method, path.ends_with(next.path)),
                    (&next.method, true),
                    "expected {} ...{}, got {method} {path}",
                    next.method,
                    next.path
                );
                (next.status, next.body)
            };
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            respond.send_response(response);
        }
        assert!(
            script.is_empty(),
            "the reconciler never asked for {} more",
            script.len()
        );
    });
    (Client::new(service, "agents"), MockApi { seen, server })
}

fn sandbox(spec: Value) -> AgentSandbox {
    let mut s = common::sandbox(spec);
    s.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    s
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context::new(
        client,
        OperatorSettings::default(),
        Arc::new(Metrics::default()),
        "test".into(),
    ))
}

fn with_status(sandbox: &AgentSandbox) -> Value {
    serde_json::to_value(sandbox).unwrap()
}

fn seen_with(seen: &[Seen], method: Method, suffix: &str) -> Vec<Seen> {
    seen.iter()
        .filter(|s| s.method == method && s.path.ends_with(suffix))
        .cloned()
        .collect()
}

fn event_reasons(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.path.contains("/events"))
        .filter_map(|s| s.body["reason"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn a_new_sandbox_gets_its_policy_then_a_hardened_pod_then_a_pending_status() {
    let s = sandbox(json!({"image": "agent:1"}));
    let (client, api) = mock_api(pod_created(&s, json!({})));
    reconcile(Arc::new(s), context(client)).await.unwrap();
    let seen = api.finish().await;

    let created = &seen_with(&seen, Method::POST, "/pods")[0].body;
    assert_eq!(created["spec"]["runtimeClassName"], "agentsandbox");
    assert_eq!(
        created["metadata"]["annotations"]["agentsandbox.io/on-escape-attempt"],
        "Deny"
    );
    assert_eq!(created["spec"]["automountServiceAccountToken"], false);
    let status = &seen_with(&seen, Method::PATCH, "/status")[0].body;
    assert_eq!(status["status"]["phase"], "Pending");
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(event_reasons(&seen), vec!["PodCreated"]);
}

#[tokio::test]
async fn suspending_deletes_the_pod_and_keeps_the_workspace() {
    let s = sandbox(json!({
        "image": "agent:1",
        "operatingMode": "Suspended",
        "workspace": {"size": "1Gi"}
    }));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "coder", "namespace": "agents", "uid": "pod-1",
            "ownerReferences": [{"apiVersion": "agentsandbox.io/v1alpha1", "kind": "AgentSandbox",
                "name": "coder", "uid": "0f0e0d0c-0000-4000-8000-000000000001", "controller": true}]}
    });
    let (client, api) = mock_api(vec![
        namespace(json!({})),
        answer(
            Method::GET,
            "/namespaces/agents/pods/coder",
            200,
            pod.clone(),
        ),
        answer(Method::PATCH, "/networkpolicies/coder", 200, json!({})),
        answer(
            Method::PATCH,
            "/persistentvolumeclaims/coder-workspace",
            200,
            json!({}),
        ),
        answer(Method::DELETE, "/services/coder", 404, not_found()),
        answer(Method::DELETE, "/namespaces/agents/pods/coder", 200, pod),
        status_write(&s),
    ]);
    reconcile(Arc::new(s), context(client)).await.unwrap();
    let seen = api.finish().await;
    assert!(seen_with(
        &seen,
        Method::DELETE,
        "/persistentvolumeclaims/coder-workspace"
    )
    .is_empty());
    assert_eq!(event_reasons(&seen), vec!["Suspended"]);
    let status = &seen_with(&seen, Method::PATCH, "/status")[0].body;
    assert_eq!(status["status"]["phase"], "Suspended");
}

#[tokio::test]
async fn a_pod_of_the_same_name_owned_by_someone_else_is_never_touched() {
    let s = sandbox(json!({"image": "agent:1"}));
    let foreign = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "coder", "namespace": "agents", "uid": "other"}
    });
    let mut script = vec![
        namespace(json!({})),
        answer(Method::GET, "/pods/coder", 200, foreign),
    ];
    script.extend(policy_and_no_service());
    script.push(status_write(&s));
    let (client, api) = mock_api(script);
    reconcile(Arc::new(s), context(client)).await.unwrap();
    let seen = api.finish().await;
    assert!(seen_with(&seen, Method::DELETE, "/pods/coder").is_empty());
    assert!(seen_with(&seen, Method::POST, "/pods").is_empty());
    let status = &seen_with(&seen, Method::PATCH, "/status")[0].body;
    let ready = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["reason"], "PodNameConflict");
}

#[tokio::test]
async fn a_passed_shutdown_time_with_policy_delete_deletes_the_sandbox_and_nothing_else() {
    let s = sandbox(json!({
        "image": "agent:1",
        "lifetime": {"shutdownTime": "2020-01-01T00:00:00Z", "shutdownPolicy": "Delete"}
    }));
    let (client, api) = mock_api(vec![
        namespace(json!({})),
        answer(Method::GET, "/pods/coder", 404, not_found()),
        answer(
            Method::DELETE,
            "/namespaces/agents/agentsandboxes/coder",
            200,
            with_status(&s),
        ),
    ]);
    reconcile(Arc::new(s), context(client)).await.unwrap();
    let seen = api.finish().await;
    assert_eq!(event_reasons(&seen), vec!["ShutdownTime"]);
}

fn ready_condition(seen: &[Seen]) -> Value {
    let status = &seen_with(seen, Method::PATCH, "/status")[0].body;
    status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone()
}

/// Reconciles a sandbox whose pod create the API server answers with `refusal`.
async fn refused(s: AgentSandbox, refusal: Value) -> Vec<Seen> {
    let mut script = vec![
        namespace(json!({})),
        answer(Method::GET, "/pods/coder", 404, not_found()),
    ];
    script.extend(policy_and_no_service());
    script.push(answer(
        Method::POST,
        "/namespaces/agents/pods",
        403,
        refusal,
    ));
    script.push(status_write(&s));
    let (client, api) = mock_api(script);
    reconcile(Arc::new(s), context(client))
        .await
        .expect("a refusal is reported, not an error");
    api.finish().await
}

#[tokio::test]
async fn a_pod_the_api_server_refuses_is_reported_on_the_sandbox_with_one_warning() {
    let forbidden = |message: &str| {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
            "code": 403, "message": message})
    };
    let pod_security = "pods \"coder\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true";
    let seen = refused(
        sandbox(json!({"image": "agent:1"})),
        forbidden(pod_security),
    )
    .await;
    let ready = ready_condition(&seen);
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "PodRejected");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("violates PodSecurity"),
        "{ready}"
    );
    let status = &seen_with(&seen, Method::PATCH, "/status")[0].body;
    assert_eq!(status["status"]["phase"], "Pending");
    let events: Vec<&Seen> = seen.iter().filter(|s| s.path.contains("/events")).collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body["type"], "Warning");
    assert_eq!(events[0].body["reason"], "PodRejected");

    // The same refusal again (the condition already carries it): no second Event.
    let mut again = sandbox(json!({"image": "agent:1"}));
    let status: agentsandbox_operator::api::AgentSandboxStatus =
        serde_json::from_value(status["status"].clone()).unwrap();
    again.status = Some(status);
    let seen = refused(again, forbidden(pod_security)).await;
    assert!(
        event_reasons(&seen).is_empty(),
        "{:?}",
        event_reasons(&seen)
    );

    let quota = "pods \"coder\" is forbidden: exceeded quota: none, requested: pods=1, used: pods=0, limited: pods=0";
    let seen = refused(sandbox(json!({"image": "agent:1"})), forbidden(quota)).await;
    assert_eq!(ready_condition(&seen)["reason"], "QuotaExceeded");
    assert_eq!(event_reasons(&seen), vec!["QuotaExceeded"]);
}

#[tokio::test]
async fn a_restricted_namespace_gets_a_non_root_pod() {
    let s = sandbox(json!({"image": "agent:1", "isolation": {"profile": "Standard"}}));
    let (client, api) = mock_api(pod_created(
        &s,
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    ));
    reconcile(Arc::new(s), context(client)).await.unwrap();
    let seen = api.finish().await;
    let created = &seen_with(&seen, Method::POST, "/pods")[0].body;
    let sc = &created["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 1000);
    assert_eq!(sc["capabilities"]["add"], Value::Null);
}
