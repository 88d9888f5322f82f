//! What goes on the wire: each MQTT message's topic and its JSON envelope, typed, in one
//! place. The store asks for a [`Message`] when it queues one in the outbox; the relay only
//! carries it. Pure: no IO.
//!
//! Every envelope has `"v": 1`. Run messages also carry `tenant`, `run`, `seq` (the event's
//! sequence number within the run, which makes duplicates from an at-least-once relay easy to
//! drop), `ts` (ms since the epoch) and `kind`.

use serde_json::Value;

/// One message for the outbox: where it goes and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: String,
}

/// Which run, which event: the part every run message shares.
#[derive(Debug, Clone, Copy)]
pub struct RunHeader<'a> {
    pub tenant: &'a str,
    pub run: &'a str,
    pub seq: i64,
    pub ts: i64,
}

/// The shared head of a run message with `kind` and the body's fields after it. Built as a
/// JSON value (infallible, unlike serialising a struct).
fn run_message(h: RunHeader<'_>, leaf: &str, kind: &str, body: Value) -> Message {
    let mut envelope =
        serde_json::json!({"v": 1, "tenant": h.tenant, "run": h.run, "seq": h.seq, "ts": h.ts, "kind": kind});
    if let (Value::Object(head), Value::Object(fields)) = (&mut envelope, body) {
        head.extend(fields);
    }
    Message { topic: super::run_topic(h.tenant, h.run, leaf), payload: envelope.to_string() }
}

/// One of a run's events (`…/events`): its kind and its payload as the store keeps it.
pub fn run_event(h: RunHeader<'_>, kind: &str, data: &Value) -> Message {
    run_message(h, "events", kind, serde_json::json!({ "data": data }))
}

/// A run's state (`…/state`, retained), with the reason when it has one.
pub fn run_state(h: RunHeader<'_>, state: &str, reason: Option<&str>) -> Message {
    run_message(h, "state", "state", serde_json::json!({ "state": state, "reason": reason }))
}

/// A result with its values (`…/results`).
pub fn run_result(h: RunHeader<'_>, data: &Value) -> Message {
    run_message(h, "results", "result", serde_json::json!({ "data": data }))
}

/// Where a tenant's container is and what happened to it (`…/containers/{id}/events`): the
/// history entry the store keeps, on the owner's topics only.
#[derive(Debug)]
pub struct ContainerEvent<'a> {
    pub tenant: &'a str,
    pub container: &'a str,
    pub barcode: &'a str,
    pub seq: i64,
    pub ts: i64,
    pub kind: &'a str,
    pub detail: &'a str,
    pub location: Option<&'a str>,
}

pub fn container_event(e: ContainerEvent<'_>) -> Message {
    let payload = serde_json::json!({
        "v": 1, "tenant": e.tenant, "container": e.container, "barcode": e.barcode, "seq": e.seq, "ts": e.ts,
        "kind": e.kind, "detail": e.detail, "location": e.location,
    });
    Message { topic: super::container_topic(e.tenant, e.container), payload: payload.to_string() }
}

/// An instrument's availability for technicians (retained): `available`, `down`,
/// `maintenance`, with what the technician should know.
pub fn device_status(site: &str, device: &str, state: &str, detail: &str, ts: i64) -> Message {
    Message {
        topic: super::device_status_topic(site, device),
        payload: serde_json::json!({"v": 1, "device": device, "state": state, "detail": detail, "ts": ts}).to_string(),
    }
}

/// The runtime's own status (retained; the relay's last will says `offline`).
pub fn runtime_status(site: &str, state: &str) -> Message {
    Message {
        topic: super::runtime_status_topic(site),
        payload: serde_json::json!({"v": 1, "state": state}).to_string(),
    }
}

/// Whether the broker keeps the last message of this topic for late subscribers: states and
/// statuses are, events and results are not.
pub fn retained(topic: &str) -> bool {
    topic.ends_with("/state") || topic.ends_with("/status")
}

/// A payload the broker can carry: the message's own, or, when it is too large, its envelope
/// without the data and a pointer to the gRPC call that has it. Never dropped.
pub fn fit(payload: &str, max: usize) -> String {
    if payload.len() <= max {
        return payload.to_string();
    }
    let v: Value = serde_json::from_str(payload).unwrap_or_default();
    let mut out = serde_json::json!({
        "truncated": true,
        "bytes": payload.len(),
        "fetch": "gRPC labwright.v1.Runs/Results or Runs/Watch for this run and seq",
    });
    for key in ["v", "tenant", "run", "seq", "ts", "kind", "state"] {
        if let Some(x) = v.get(key) {
            out[key] = x.clone();
        }
    }
    if let Some(id) = v.get("data").and_then(|d| d.get("result")) {
        out["result"] = id.clone();
    }
    out.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(m: &Message) -> Value {
        serde_json::from_str(&m.payload).unwrap()
    }

    #[test]
    fn container_events_go_to_their_owners_topic() {
        let m = container_event(ContainerEvent {
            tenant: "ten_a",
            container: "con_b",
            barcode: "PL-1",
            seq: 2,
            ts: 5,
            kind: "stored",
            detail: "after run r: stored (fridge1)",
            location: Some("fridge1"),
        });
        assert_eq!(m.topic, "lab/v1/t/ten_a/containers/con_b/events");
        let v: Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["barcode"].as_str(), v["location"].as_str()),
            (Some("stored"), Some("PL-1"), Some("fridge1"))
        );
        assert!(!retained(&m.topic));
    }

    #[test]
    fn run_messages_name_the_tenant_run_and_sequence_in_topic_and_envelope() {
        let h = RunHeader { tenant: "ten_a", run: "run_b", seq: 7, ts: 1_700_000_000_000 };
        let data = serde_json::json!({"task": 2});
        let ev = run_event(h, "task_started", &data);
        assert_eq!(ev.topic, "lab/v1/t/ten_a/runs/run_b/events");
        assert_eq!(
            parse(&ev),
            serde_json::json!({"v": 1, "tenant": "ten_a", "run": "run_b", "seq": 7, "ts": 1_700_000_000_000i64,
                "kind": "task_started", "data": {"task": 2}})
        );
        let st = run_state(h, "failed", Some("lh1: tip not found"));
        assert_eq!(st.topic, "lab/v1/t/ten_a/runs/run_b/state");
        assert_eq!((parse(&st)["kind"].clone(), parse(&st)["state"].clone()), ("state".into(), "failed".into()));
        assert_eq!(parse(&st)["reason"], "lh1: tip not found");
        // No reason is an explicit null, so a subscriber can tell it from an old format.
        assert!(parse(&run_state(h, "running", None))["reason"].is_null());
        let res = run_result(h, &serde_json::json!({"result": "res_c"}));
        assert_eq!(res.topic, "lab/v1/t/ten_a/runs/run_b/results");
        assert_eq!(parse(&res)["kind"], "result");
        assert!(retained(&st.topic) && !retained(&ev.topic) && !retained(&res.topic));
    }

    #[test]
    fn site_messages_are_retained_and_carry_no_tenant() {
        let d = device_status("lab1", "lh1", "down", "serial port closed", 5);
        assert_eq!(d.topic, "lab/v1/site/lab1/devices/lh1/status");
        assert_eq!(
            parse(&d),
            serde_json::json!({"v": 1, "device": "lh1", "state": "down", "detail": "serial port closed", "ts": 5})
        );
        let r = runtime_status("lab1", "offline");
        assert_eq!(r.topic, "lab/v1/site/lab1/runtime/status");
        assert_eq!(parse(&r), serde_json::json!({"v": 1, "state": "offline"}));
        assert!(retained(&d.topic) && retained(&r.topic));
    }

    #[test]
    fn oversize_payloads_are_summarised_not_dropped() {
        let small = r#"{"v":1,"seq":3}"#;
        assert_eq!(fit(small, 100), small);
        let values: Vec<f64> = (0..5000).map(f64::from).collect();
        let big = serde_json::json!({"v": 1, "tenant": "ten_a", "run": "run_b", "seq": 9, "ts": 1, "kind": "result",
            "data": {"result": "res_c", "values": values}})
        .to_string();
        let out: serde_json::Value = serde_json::from_str(&fit(&big, 1000)).unwrap();
        assert!(out.to_string().len() < 1000);
        assert_eq!(out["truncated"], true);
        assert_eq!(
            (out["run"].as_str(), out["seq"].as_i64(), out["result"].as_str()),
            (Some("run_b"), Some(9), Some("res_c"))
        );
        assert_eq!(out["bytes"].as_u64(), Some(big.len() as u64));
        assert!(out["fetch"].as_str().unwrap().contains("gRPC"));
    }
}
