//! The management API checks vhost permissions as AMQP does: every
//! operation on a queue or exchange is performed as the caller, with the
//! configure / write / read patterns of its AMQP method, and tags
//! (administrator included) do not bypass them. Policies need the
//! policymaker tag and access to the vhost; definitions imports need the
//! administrator tag.
//!
//! The table runs each endpoint three times: as a user refused by exactly
//! the pattern that matters (403, nothing changed), as a user without a
//! permission entry for the vhost (401, nothing changed), and as a user
//! allowed by that pattern (the operation really happened).

use crate::mgmt_support::Api;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PW: &str = "pw";
/// A management user without any permission entry for `/`.
const STRANGER: &str = "stranger";

/// (configure, write, read).
type Perms = (&'static str, &'static str, &'static str);

/// Every pattern permissive but one, set to `pattern`.
fn configure(pattern: &'static str) -> Perms {
    (pattern, ".*", ".*")
}
fn write(pattern: &'static str) -> Perms {
    (".*", pattern, ".*")
}
fn read(pattern: &'static str) -> Perms {
    (".*", ".*", pattern)
}

async fn add_user(api: &Api, name: &str, tags: &str, perms: Option<Perms>) {
    let (status, body) = api
        .put(
            &format!("/users/{name}"),
            json!({"password": PW, "tags": tags}),
        )
        .await;
    assert!(status.is_success(), "user {name}: {status} {body}");
    if let Some((c, w, r)) = perms {
        let (status, body) = api
            .put(
                &format!("/permissions/%2F/{name}"),
                json!({"configure": c, "write": w, "read": r}),
            )
            .await;
        assert!(
            status.is_success(),
            "permissions of {name}: {status} {body}"
        );
    }
}

/// Objects a case needs, created as guest before it runs.
enum Setup {
    Queue(&'static str),
    Exchange(&'static str, &'static str),
    /// (source exchange, "q" or "e", destination, routing key).
    Bind(&'static str, &'static str, &'static str, &'static str),
    /// `n` messages `m0`, `m1`, ... to a queue through the default exchange.
    Messages(&'static str, usize),
}

async fn setup(api: &Api, step: &Setup) {
    let (status, body) = match *step {
        Setup::Queue(q) => {
            api.put(&format!("/queues/%2F/{q}"), json!({"durable": false}))
                .await
        }
        Setup::Exchange(x, kind) => {
            api.put(
                &format!("/exchanges/%2F/{x}"),
                json!({"type": kind, "durable": false}),
            )
            .await
        }
        Setup::Bind(source, kind, destination, key) => {
            api.post(
                &format!("/bindings/%2F/e/{source}/{kind}/{destination}"),
                json!({"routing_key": key}),
            )
            .await
        }
        Setup::Messages(q, n) => {
            for i in 0..n {
                let (status, body) = api
                    .post(
                        "/exchanges/%2F/amq.default/publish",
                        json!({"properties": {}, "routing_key": q,
                               "payload": format!("m{i}"), "payload_encoding": "string"}),
                    )
                    .await;
                assert_eq!((status, &body), (StatusCode::OK, &json!({"routed": true})));
            }
            return;
        }
    };
    assert!(status.is_success(), "setup: {status} {body}");
}

/// What a case looks at to tell whether its operation happened.
enum Probe {
    /// 1 if the queue exists, else 0.
    Queue(&'static str),
    /// 1 if the exchange exists, else 0.
    Exchange(&'static str),
    /// The queue's ready messages.
    Ready(&'static str),
    /// The bindings from the source exchange to the destination
    /// (source, "q" or "e", destination).
    Bindings(&'static str, &'static str, &'static str),
}

async fn observe(api: &Api, probe: &Probe) -> i64 {
    match *probe {
        Probe::Queue(q) => (api.get(&format!("/queues/%2F/{q}")).await.0 == StatusCode::OK) as i64,
        Probe::Exchange(x) => {
            (api.get(&format!("/exchanges/%2F/{x}")).await.0 == StatusCode::OK) as i64
        }
        Probe::Ready(q) => {
            let (status, body) = api.get(&format!("/queues/%2F/{q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            body["messages_ready"].as_i64().expect("messages_ready")
        }
        Probe::Bindings(source, kind, destination) => {
            let (status, body) = api
                .get(&format!("/bindings/%2F/e/{source}/{kind}/{destination}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body.as_array().expect("a list").len() as i64
        }
    }
}

/// What the allowed call answers, when its body carries the result.
enum Answer {
    Empty,
    Exactly(Value),
    /// A list of messages with these payloads.
    Payloads(&'static [&'static str]),
}

struct Case {
    name: &'static str,
    setup: Vec<Setup>,
    method: Method,
    path: &'static str,
    body: Option<Value>,
    /// The permissions of the allowed user and of the refused one: they
    /// differ only in the pattern that matters.
    allowed: Perms,
    refused: Perms,
    /// The object named in the refusal: "queue 'q'" or "exchange 'x'".
    refused_on: &'static str,
    ok: StatusCode,
    answer: Answer,
    probe: Probe,
    /// The probe before, and after the allowed call.
    before: i64,
    after: i64,
}

async fn call(api: &Api, case: &Case, user: &str) -> (StatusCode, Value) {
    api.call_as(
        (user, PW),
        case.method.clone(),
        case.path,
        case.body.clone(),
    )
    .await
}

async fn run(cases: Vec<Case>) {
    let api = Api::start().await;
    add_user(&api, STRANGER, "management", None).await;
    for case in &cases {
        let name = case.name;
        for step in &case.setup {
            setup(&api, step).await;
        }
        assert_eq!(
            observe(&api, &case.probe).await,
            case.before,
            "{name}: before"
        );
        let ok_user = format!("{name}-ok");
        let no_user = format!("{name}-no");
        add_user(&api, &ok_user, "management", Some(case.allowed)).await;
        add_user(&api, &no_user, "management", Some(case.refused)).await;

        // Refused by the one pattern that matters: 403, nothing changed.
        let (status, body) = call(&api, case, &no_user).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {body}");
        assert_eq!(
            body,
            json!({
                "error": "access_refused",
                "reason": format!(
                    "access to {} in vhost '/' refused for user '{no_user}'",
                    case.refused_on
                ),
            }),
            "{name}"
        );
        assert_eq!(
            observe(&api, &case.probe).await,
            case.before,
            "{name}: changed by a refused call"
        );

        // No permission entry for the vhost at all: 401, nothing changed.
        let (status, body) = call(&api, case, STRANGER).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {body}");
        assert_eq!(
            body,
            json!({"error": "not_authorized", "reason": "User not authorised to access virtual host"}),
            "{name}"
        );
        assert_eq!(
            observe(&api, &case.probe).await,
            case.before,
            "{name}: changed by a user without access"
        );

        // Allowed: the operation happened.
        let (status, body) = call(&api, case, &ok_user).await;
        assert_eq!(status, case.ok, "{name}: {body}");
        match &case.answer {
            Answer::Empty => assert_eq!(body, Value::Null, "{name}"),
            Answer::Exactly(v) => assert_eq!(&body, v, "{name}"),
            Answer::Payloads(p) => {
                let got: Vec<&str> = body
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}: not a list: {body}"))
                    .iter()
                    .map(|m| m["payload"].as_str().unwrap_or_default())
                    .collect();
                assert_eq!(&got, p, "{name}");
            }
        }
        assert_eq!(
            observe(&api, &case.probe).await,
            case.after,
            "{name}: after the allowed call"
        );
    }
}

#[tokio::test]
async fn queue_endpoints_check_permissions_as_amqp() {
    let get = |ackmode: &str| Some(json!({"count": 1, "ackmode": ackmode, "encoding": "auto"}));
    run(vec![
        Case {
            name: "queue-declare",
            setup: vec![],
            method: Method::PUT,
            path: "/queues/%2F/decl-q",
            body: Some(json!({"durable": false})),
            allowed: configure("^decl-q$"),
            refused: configure("^other$"),
            refused_on: "queue 'decl-q'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Queue("decl-q"),
            before: 0,
            after: 1,
        },
        // With a dead-letter exchange: also write on it ...
        Case {
            name: "queue-declare-dlx-write",
            setup: vec![],
            method: Method::PUT,
            path: "/queues/%2F/dlx-q1",
            body: Some(json!({"durable": false, "arguments": {"x-dead-letter-exchange": "dlx-x"}})),
            allowed: write("^dlx-x$"),
            refused: write("^dlx-q1$"),
            refused_on: "exchange 'dlx-x'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Queue("dlx-q1"),
            before: 0,
            after: 1,
        },
        // ... and read on the queue.
        Case {
            name: "queue-declare-dlx-read",
            setup: vec![],
            method: Method::PUT,
            path: "/queues/%2F/dlx-q2",
            body: Some(json!({"durable": false, "arguments": {"x-dead-letter-exchange": "dlx-x"}})),
            allowed: read("^dlx-q2$"),
            refused: read("^dlx-x$"),
            refused_on: "queue 'dlx-q2'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Queue("dlx-q2"),
            before: 0,
            after: 1,
        },
        Case {
            name: "queue-delete",
            setup: vec![Setup::Queue("del-q")],
            method: Method::DELETE,
            path: "/queues/%2F/del-q",
            body: None,
            allowed: configure("^del-q$"),
            refused: configure("^other$"),
            refused_on: "queue 'del-q'",
            ok: StatusCode::NO_CONTENT,
            answer: Answer::Empty,
            probe: Probe::Queue("del-q"),
            before: 1,
            after: 0,
        },
        Case {
            name: "queue-purge",
            setup: vec![Setup::Queue("purge-q"), Setup::Messages("purge-q", 2)],
            method: Method::DELETE,
            path: "/queues/%2F/purge-q/contents",
            body: None,
            allowed: read("^purge-q$"),
            refused: read("^other$"),
            refused_on: "queue 'purge-q'",
            ok: StatusCode::NO_CONTENT,
            answer: Answer::Empty,
            probe: Probe::Ready("purge-q"),
            before: 2,
            after: 0,
        },
        Case {
            name: "queue-get-ack",
            setup: vec![Setup::Queue("get-q1"), Setup::Messages("get-q1", 2)],
            method: Method::POST,
            path: "/queues/%2F/get-q1/get",
            body: get("ack_requeue_false"),
            allowed: read("^get-q1$"),
            refused: read("^other$"),
            refused_on: "queue 'get-q1'",
            ok: StatusCode::OK,
            answer: Answer::Payloads(&["m0"]),
            probe: Probe::Ready("get-q1"),
            before: 2,
            after: 1,
        },
        Case {
            name: "queue-get-requeue",
            setup: vec![Setup::Queue("get-q2"), Setup::Messages("get-q2", 2)],
            method: Method::POST,
            path: "/queues/%2F/get-q2/get",
            body: get("ack_requeue_true"),
            allowed: read("^get-q2$"),
            refused: read("^other$"),
            refused_on: "queue 'get-q2'",
            ok: StatusCode::OK,
            answer: Answer::Payloads(&["m0"]),
            probe: Probe::Ready("get-q2"),
            before: 2,
            after: 2,
        },
        Case {
            name: "queue-get-reject",
            setup: vec![Setup::Queue("get-q3"), Setup::Messages("get-q3", 2)],
            method: Method::POST,
            path: "/queues/%2F/get-q3/get",
            body: get("reject_requeue_false"),
            allowed: read("^get-q3$"),
            refused: read("^other$"),
            refused_on: "queue 'get-q3'",
            ok: StatusCode::OK,
            answer: Answer::Payloads(&["m0"]),
            probe: Probe::Ready("get-q3"),
            before: 2,
            after: 1,
        },
        Case {
            name: "queue-browse",
            setup: vec![Setup::Queue("browse-q"), Setup::Messages("browse-q", 2)],
            method: Method::POST,
            path: "/queues/%2F/browse-q/browse",
            body: Some(json!({"count": 5})),
            allowed: read("^browse-q$"),
            refused: read("^other$"),
            refused_on: "queue 'browse-q'",
            ok: StatusCode::OK,
            answer: Answer::Payloads(&["m0", "m1"]),
            probe: Probe::Ready("browse-q"),
            before: 2,
            after: 2,
        },
    ])
    .await;
}

#[tokio::test]
async fn exchange_endpoints_check_permissions_as_amqp() {
    let publish = |key: &str| {
        Some(
            json!({"properties": {}, "routing_key": key, "payload": "hi",
                    "payload_encoding": "string"}),
        )
    };
    run(vec![
        Case {
            name: "exchange-declare",
            setup: vec![],
            method: Method::PUT,
            path: "/exchanges/%2F/decl-x",
            body: Some(json!({"type": "direct", "durable": false})),
            allowed: configure("^decl-x$"),
            refused: configure("^other$"),
            refused_on: "exchange 'decl-x'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Exchange("decl-x"),
            before: 0,
            after: 1,
        },
        // With an alternate exchange: also write on it ...
        Case {
            name: "exchange-declare-ae-write",
            setup: vec![Setup::Exchange("ae-target", "fanout")],
            method: Method::PUT,
            path: "/exchanges/%2F/ae-x1",
            body: Some(json!({"type": "direct", "durable": false,
                              "arguments": {"alternate-exchange": "ae-target"}})),
            allowed: write("^ae-target$"),
            refused: write("^ae-x1$"),
            refused_on: "exchange 'ae-target'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Exchange("ae-x1"),
            before: 0,
            after: 1,
        },
        // ... and read on the new exchange.
        Case {
            name: "exchange-declare-ae-read",
            setup: vec![],
            method: Method::PUT,
            path: "/exchanges/%2F/ae-x2",
            body: Some(json!({"type": "direct", "durable": false,
                              "arguments": {"alternate-exchange": "ae-target"}})),
            allowed: read("^ae-x2$"),
            refused: read("^ae-target$"),
            refused_on: "exchange 'ae-x2'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Exchange("ae-x2"),
            before: 0,
            after: 1,
        },
        Case {
            name: "exchange-delete",
            setup: vec![Setup::Exchange("del-x", "direct")],
            method: Method::DELETE,
            path: "/exchanges/%2F/del-x",
            body: None,
            allowed: configure("^del-x$"),
            refused: configure("^other$"),
            refused_on: "exchange 'del-x'",
            ok: StatusCode::NO_CONTENT,
            answer: Answer::Empty,
            probe: Probe::Exchange("del-x"),
            before: 1,
            after: 0,
        },
        Case {
            name: "exchange-publish",
            setup: vec![
                Setup::Queue("pub-q"),
                Setup::Exchange("pub-x", "fanout"),
                Setup::Bind("pub-x", "q", "pub-q", ""),
            ],
            method: Method::POST,
            path: "/exchanges/%2F/pub-x/publish",
            body: publish("any"),
            allowed: write("^pub-x$"),
            refused: write("^pub-q$"),
            refused_on: "exchange 'pub-x'",
            ok: StatusCode::OK,
            answer: Answer::Exactly(json!({"routed": true})),
            probe: Probe::Ready("pub-q"),
            before: 0,
            after: 1,
        },
        // The default exchange is checked as `amq.default`, not as the
        // queue it routes to.
        Case {
            name: "default-exchange-publish",
            setup: vec![Setup::Queue("pubd-q")],
            method: Method::POST,
            path: "/exchanges/%2F/amq.default/publish",
            body: publish("pubd-q"),
            allowed: write(r"^amq\.default$"),
            refused: write("^pubd-q$"),
            refused_on: "exchange 'amq.default'",
            ok: StatusCode::OK,
            answer: Answer::Exactly(json!({"routed": true})),
            probe: Probe::Ready("pubd-q"),
            before: 0,
            after: 1,
        },
    ])
    .await;
}

#[tokio::test]
async fn binding_endpoints_check_permissions_as_amqp() {
    let key = Some(json!({"routing_key": "k"}));
    run(vec![
        // Bind: write on the destination ...
        Case {
            name: "bind-queue-write",
            setup: vec![Setup::Exchange("bq1-x", "direct"), Setup::Queue("bq1-q")],
            method: Method::POST,
            path: "/bindings/%2F/e/bq1-x/q/bq1-q",
            body: key.clone(),
            allowed: write("^bq1-q$"),
            refused: write("^bq1-x$"),
            refused_on: "queue 'bq1-q'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Bindings("bq1-x", "q", "bq1-q"),
            before: 0,
            after: 1,
        },
        // ... and read on the source.
        Case {
            name: "bind-queue-read",
            setup: vec![Setup::Exchange("bq2-x", "direct"), Setup::Queue("bq2-q")],
            method: Method::POST,
            path: "/bindings/%2F/e/bq2-x/q/bq2-q",
            body: key.clone(),
            allowed: read("^bq2-x$"),
            refused: read("^bq2-q$"),
            refused_on: "exchange 'bq2-x'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Bindings("bq2-x", "q", "bq2-q"),
            before: 0,
            after: 1,
        },
        Case {
            name: "bind-exchange-write",
            setup: vec![
                Setup::Exchange("be1-src", "direct"),
                Setup::Exchange("be1-dst", "fanout"),
            ],
            method: Method::POST,
            path: "/bindings/%2F/e/be1-src/e/be1-dst",
            body: key.clone(),
            allowed: write("^be1-dst$"),
            refused: write("^be1-src$"),
            refused_on: "exchange 'be1-dst'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Bindings("be1-src", "e", "be1-dst"),
            before: 0,
            after: 1,
        },
        Case {
            name: "bind-exchange-read",
            setup: vec![
                Setup::Exchange("be2-src", "direct"),
                Setup::Exchange("be2-dst", "fanout"),
            ],
            method: Method::POST,
            path: "/bindings/%2F/e/be2-src/e/be2-dst",
            body: key.clone(),
            allowed: read("^be2-src$"),
            refused: read("^be2-dst$"),
            refused_on: "exchange 'be2-src'",
            ok: StatusCode::CREATED,
            answer: Answer::Empty,
            probe: Probe::Bindings("be2-src", "e", "be2-dst"),
            before: 0,
            after: 1,
        },
        // Unbind: the same checks.
        Case {
            name: "unbind-queue-write",
            setup: vec![
                Setup::Exchange("uq1-x", "direct"),
                Setup::Queue("uq1-q"),
                Setup::Bind("uq1-x", "q", "uq1-q", "k"),
            ],
            method: Method::DELETE,
            path: "/bindings/%2F/e/uq1-x/q/uq1-q/k",
            body: None,
            allowed: write("^uq1-q$"),
            refused: write("^uq1-x$"),
            refused_on: "queue 'uq1-q'",
            ok: StatusCode::NO_CONTENT,
            answer: Answer::Empty,
            probe: Probe::Bindings("uq1-x", "q", "uq1-q"),
            before: 1,
            after: 0,
        },
        Case {
            name: "unbind-queue-read",
            setup: vec![
                Setup::Exchange("uq2-x", "direct"),
                Setup::Queue("uq2-q"),
                Setup::Bind("uq2-x", "q", "uq2-q", "k"),
            ],
            method: Method::DELETE,
            path: "/bindings/%2F/e/uq2-x/q/uq2-q/k",
            body: None,
            allowed: read("^uq2-x$"),
            refused: read("^uq2-q$"),
            refused_on: "exchange 'uq2-x'",
            ok: StatusCode::NO_CONTENT,
            answer: Answer::Empty,
            probe: Probe::Bindings("uq2-x", "q", "uq2-q"),
            before: 1,
            after: 0,
        },
        Case {
            name: "unbind-exchange-write",
            setup: vec![
                Setup::Exchange("ue1-src", "direct"),
                Setup::Exchange("ue1-dst", "fanout"),
                Setup::Bind("ue1-src", "e", "ue1-dst", "k"),
            ],
            method: Method::DELETE,
            path: "/bindings/%2F/e/ue1-src/e/ue1-dst/k",
            body: None,
            allowed: write("^ue1-dst$"),
            refused: write("^ue1-src$"),
            refused_on: "exchange 'ue1-dst'",
            ok: StatusCode::NO_CONTENT,
            answer: Answer::Empty,
            probe: Probe::Bindings("ue1-src", "e", "ue1-dst"),
            before: 1,
            after: 0,
        },
        Case {
            name: "unbind-exchange-read",
            setup: vec![
                Setup::Exchange("ue2-src", "direct"),
                Setup::Exchange("ue2-dst", "fanout"),
                Setup::Bind("ue2-src", "e", "ue2-dst", "k"),
            ],
            method: Method::DELETE,
            path: "/bindings/%2F/e/ue2-src/e/ue2-dst/k",
            body: None,
            allowed: read("^ue2-src$"),
            refused: read("^ue2-dst$"),
            refused_on: "exchange 'ue2-src'",
            ok: StatusCode::NO_CONTENT,
            answer: Answer::Empty,
            probe: Probe::Bindings("ue2-src", "e", "ue2-dst"),
            before: 1,
            after: 0,
        },
    ])
    .await;
}

/// The case reported in issue #16: a user who may only read `public`
/// could take the messages of `secret` and delete it over HTTP, though
/// AMQP refused it both. Now HTTP refuses with AMQP's text.
#[tokio::test]
async fn the_reported_case_is_refused_as_over_amqp() {
    let api = Api::start().await;
    add_user(&api, "u", "management", Some(("^$", "^$", "^public$"))).await;
    setup(&api, &Setup::Queue("secret")).await;
    setup(&api, &Setup::Messages("secret", 3)).await;
    let as_u = |method: Method, path: &'static str, body: Option<Value>| {
        api.call_as(("u", PW), method, path, body)
    };
    let refusal = "access to queue 'secret' in vhost '/' refused for user 'u'";

    let (status, body) = as_u(
        Method::POST,
        "/queues/%2F/secret/get",
        Some(json!({"count": 3, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body, json!({"error": "access_refused", "reason": refusal}));
    let (status, body) = as_u(Method::DELETE, "/queues/%2F/secret", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body, json!({"error": "access_refused", "reason": refusal}));
    assert_eq!(observe(&api, &Probe::Ready("secret")).await, 3);

    // AMQP refuses the same user with the same text.
    let conn = api.amqp("u", PW, "/").await.expect("amqp login");
    let ch = conn.create_channel().await.expect("channel");
    let err = ch
        .basic_get("secret".into(), Default::default())
        .await
        .expect_err("basic.get refused");
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => {
            assert_eq!(e.get_id(), 403);
            assert_eq!(
                e.get_message().as_str(),
                format!("ACCESS_REFUSED - {refusal}")
            );
        }
        other => panic!("not an AMQP error: {other:?}"),
    }
    assert_eq!(observe(&api, &Probe::Ready("secret")).await, 3);
}

/// RabbitMQ's management performs these operations as the caller, so an
/// administrator is held to its patterns too.
#[tokio::test]
async fn administrators_are_not_exempt_from_patterns() {
    let api = Api::start().await;
    add_user(
        &api,
        "boss",
        "administrator",
        Some(("^mine", "^mine", "^mine")),
    )
    .await;
    setup(&api, &Setup::Queue("theirs")).await;
    setup(&api, &Setup::Messages("theirs", 1)).await;
    let refusal = json!({"error": "access_refused",
                         "reason": "access to queue 'theirs' in vhost '/' refused for user 'boss'"});
    for (method, path, body) in [
        (
            Method::POST,
            "/queues/%2F/theirs/get",
            Some(json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})),
        ),
        (Method::DELETE, "/queues/%2F/theirs/contents", None),
        (Method::DELETE, "/queues/%2F/theirs", None),
    ] {
        let (status, reply) = api.call_as(("boss", PW), method, path, body).await;
        assert_eq!(
            (status, &reply),
            (StatusCode::FORBIDDEN, &refusal),
            "{path}"
        );
    }
    assert_eq!(observe(&api, &Probe::Ready("theirs")).await, 1);
    // Its own objects it may change.
    let (status, body) = api
        .call_as(
            ("boss", PW),
            Method::PUT,
            "/queues/%2F/mine-q",
            Some(json!({"durable": false})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Permissions stay its business, whatever its own patterns: with
    // wider ones it may delete the queue.
    let (status, body) = api
        .call_as(
            ("boss", PW),
            Method::PUT,
            "/permissions/%2F/boss",
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (status, body) = api
        .call_as(("boss", PW), Method::DELETE, "/queues/%2F/theirs", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(observe(&api, &Probe::Queue("theirs")).await, 0);
}

#[tokio::test]
async fn monitoring_users_only_read() {
    let api = Api::start().await;
    add_user(&api, "watcher", "monitoring", Some((".*", ".*", ".*"))).await;
    setup(&api, &Setup::Queue("watched")).await;
    setup(&api, &Setup::Messages("watched", 1)).await;
    let read_only = json!({"error": "not_authorized",
                           "reason": "Not authorised: monitoring users are read-only"});
    for (method, path, body) in [
        (Method::PUT, "/queues/%2F/new-q", Some(json!({}))),
        (Method::DELETE, "/queues/%2F/watched", None),
        (Method::DELETE, "/queues/%2F/watched/contents", None),
        (
            Method::POST,
            "/queues/%2F/watched/get",
            Some(json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})),
        ),
        (
            Method::POST,
            "/exchanges/%2F/amq.default/publish",
            Some(
                json!({"properties": {}, "routing_key": "watched", "payload": "x",
                        "payload_encoding": "string"}),
            ),
        ),
        (
            Method::POST,
            "/bindings/%2F/e/amq.direct/q/watched",
            Some(json!({"routing_key": "k"})),
        ),
        (
            Method::PUT,
            "/policies/%2F/p",
            Some(json!({"pattern": ".*", "definition": {"max-length": 1}})),
        ),
    ] {
        let (status, reply) = api.call_as(("watcher", PW), method, path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {reply}");
        if !path.starts_with("/policies") {
            assert_eq!(reply, read_only, "{path}");
        }
    }
    assert_eq!(observe(&api, &Probe::Ready("watched")).await, 1);
    assert_eq!(observe(&api, &Probe::Queue("new-q")).await, 0);
    assert_eq!(
        observe(&api, &Probe::Bindings("amq.direct", "q", "watched")).await,
        0
    );
    assert_eq!(api.get("/policies/%2F/p").await.0, StatusCode::NOT_FOUND);
    // Browsing reads without changing anything: its read pattern allows it.
    let (status, body) = api
        .call_as(
            ("watcher", PW),
            Method::POST,
            "/queues/%2F/watched/browse",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["payload"], "m0");
}

/// Policies: the administrator tag, or the policymaker tag with a
/// permission entry for the vhost (its patterns do not matter).
#[tokio::test]
async fn policies_need_policymaker_and_vhost_access() {
    let api = Api::start().await;
    let not_policymaker = json!({"error": "not_authorized",
                                 "reason": "Not policymaker or administrator user"});
    let no_vhost = json!({"error": "not_authorized",
                          "reason": "User not authorised to access virtual host"});
    let users: [(&str, &str, Option<Perms>, Option<&Value>); 6] = [
        (
            "mgmt",
            "management",
            Some((".*", ".*", ".*")),
            Some(&not_policymaker),
        ),
        (
            "watch",
            "monitoring",
            Some((".*", ".*", ".*")),
            Some(&not_policymaker),
        ),
        ("pm-none", "policymaker", None, Some(&no_vhost)),
        (
            "pm-watch-none",
            "policymaker,monitoring",
            None,
            Some(&no_vhost),
        ),
        ("pm", "policymaker", Some(("^$", "^$", "^$")), None),
        ("admin-none", "administrator", None, None),
    ];
    for (user, tags, perms, refusal) in users {
        add_user(&api, user, tags, perms).await;
        let path = format!("/policies/%2F/p-{user}");
        let policy = json!({"pattern": "^nothing$", "definition": {"max-length": 1}});
        let (status, body) = api
            .call_as((user, PW), Method::PUT, &path, Some(policy.clone()))
            .await;
        match refusal {
            Some(refusal) => {
                assert_eq!(
                    (status, &body),
                    (StatusCode::UNAUTHORIZED, refusal),
                    "{user}"
                );
                assert_eq!(api.get(&path).await.0, StatusCode::NOT_FOUND, "{user}");
                // Nor may it delete one set by someone else.
                let (status, _) = api.put(&path, policy).await;
                assert_eq!(status, StatusCode::CREATED);
                let (status, body) = api.call_as((user, PW), Method::DELETE, &path, None).await;
                assert_eq!(
                    (status, &body),
                    (StatusCode::UNAUTHORIZED, refusal),
                    "{user}"
                );
                assert_eq!(api.get(&path).await.0, StatusCode::OK, "{user}");
            }
            None => {
                assert_eq!(status, StatusCode::CREATED, "{user}: {body}");
                let (status, got) = api.get(&path).await;
                assert_eq!(status, StatusCode::OK, "{user}");
                assert_eq!(got["pattern"], "^nothing$");
                let (status, body) = api.call_as((user, PW), Method::DELETE, &path, None).await;
                assert_eq!(status, StatusCode::NO_CONTENT, "{user}: {body}");
                assert_eq!(api.get(&path).await.0, StatusCode::NOT_FOUND, "{user}");
            }
        }
    }
}

/// Importing definitions is for administrators, whatever the permissions.
#[tokio::test]
async fn definitions_import_needs_the_administrator_tag() {
    let api = Api::start().await;
    add_user(&api, "mgmt", "management", Some((".*", ".*", ".*"))).await;
    add_user(&api, "pm", "policymaker", Some((".*", ".*", ".*"))).await;
    let doc = |queue: &str| {
        json!({"queues": [{"name": queue, "vhost": "/", "durable": true,
                           "auto_delete": false, "arguments": {}}]})
    };
    for user in ["mgmt", "pm"] {
        for (path, queue) in [
            ("/definitions", "imported-all"),
            ("/definitions/%2F", "imported-one"),
        ] {
            let (status, body) = api
                .call_as((user, PW), Method::POST, path, Some(doc(queue)))
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{user} {path}");
            assert_eq!(
                body,
                json!({"error": "not_authorized", "reason": "Not administrator user"})
            );
            assert_eq!(
                observe(&api, &Probe::Queue(queue)).await,
                0,
                "{user} {path}"
            );
        }
    }
    for (path, queue) in [
        ("/definitions", "imported-all"),
        ("/definitions/%2F", "imported-one"),
    ] {
        let (status, body) = api.post(path, doc(queue)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {body}");
        assert_eq!(observe(&api, &Probe::Queue(queue)).await, 1, "{path}");
    }
}
