"""Your tenant's live events over MQTT, with the credentials `labctl token create` issues with a
token (its `mqtt` block: host, port, username, password, topics). Needs `paho-mqtt`
(`pip install labwright[mqtt]`). MQTT gives what happens from the moment you subscribe; for a
run's history use `Run.events()` (gRPC Watch), which starts at its first event."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from typing import Any, Iterator, Mapping

FINAL_STATES = ("succeeded", "failed", "cancelled")


class Subscription:
    """Subscribed to every run event of your tenant (`lab/v1/t/{tenant}/runs/+/events`) from
    the moment it is made; `events(run_id)` yields one run's."""

    def __init__(self, mqtt: Mapping[str, Any], timeout_s: float = 30.0):
        try:
            import paho.mqtt.client as paho
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("MQTT events need paho-mqtt: pip install 'labwright[mqtt]'") from e
        prefix = str(mqtt["topics"]).rstrip("#")
        self.topic = f"{prefix}runs/+/events"
        self._queue: "queue.Queue[dict]" = queue.Queue()
        self._timeout = timeout_s
        subscribed = threading.Event()
        failed: list[str] = []
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"labwright-py-{uuid.uuid4().hex[:12]}")
        client.username_pw_set(str(mqtt["username"]), str(mqtt["password"]))

        def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                failed.append(f"the broker refused the connection: {reason}")
                subscribed.set()
            else:
                c.subscribe(self.topic, qos=1)

        def on_subscribe(_c: Any, _u: Any, _mid: Any, reasons: Any, _p: Any) -> None:
            if any(r.is_failure for r in reasons):
                failed.append(f"the broker refused the subscription to {self.topic}")
            subscribed.set()

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            self._queue.put(json.loads(m.payload))

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.connect(str(mqtt["host"]), int(mqtt["port"]))
        client.loop_start()
        self._client = client
        if not subscribed.wait(timeout_s) or failed:
            self.close()
            raise ConnectionError(failed[0] if failed else f"no answer from the broker within {timeout_s} s")

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def events(self, run_id: str) -> Iterator[dict]:
        """One run's events as the broker delivers them (`{v, tenant, run, seq, ts, kind,
        data}`), until its final state; other runs' events are passed over."""
        while True:
            try:
                e = self._queue.get(timeout=self._timeout)
            except queue.Empty:
                raise TimeoutError(f"no event of run {run_id} within {self._timeout} s") from None
            if e.get("run") != run_id:
                continue
            yield e
            if e.get("kind") == "state" and (e.get("data") or {}).get("state") in FINAL_STATES:
                return
