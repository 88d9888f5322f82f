"""The Labwright client: a lab (`Lab`), its runs (`Run`), and errors that carry the lab's own
words (`LabwrightError`, `ProtocolError` with Labwright's diagnostics, `RunFailed`)."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, Union
from urllib.parse import urlparse

import grpc
import pandas as pd

from .plate import plate_frame, plate_html
from .v1 import protocols_pb2, protocols_pb2_grpc, runs_pb2, runs_pb2_grpc

if TYPE_CHECKING:
    from .mqtt import Subscription

#: A protocol: a file's path, or a Labwright protocol as a dict (sent as JSON).
Protocol = Union[str, "os.PathLike[str]", Mapping[str, Any]]

#: The columns of `Run.results()`, in order (the same as `labctl results --format csv`).
RESULT_COLUMNS = [
    "run", "protocol", "result", "labware", "kind", "well", "sample", "group", "role", "replicate",
    "concentration", "concentration_unit", "wavelength_nm", "value", "unit", "read_at",
    "source_samples", "source_wells",
]

FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Diagnostic:
    """One problem Labwright found in a protocol, where it is, and what to do about it."""

    code: str
    severity: str
    message: str
    line: int
    column: int
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.line}:{self.column}: {self.severity}[{self.code}]: {self.message}"
        return text + (f" (hint: {self.hint})" if self.hint else "")


class LabwrightError(Exception):
    """A call the lab refused, with its gRPC status name (`NOT_FOUND`, `PERMISSION_DENIED`, …)
    and the lab's message."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code


class ProtocolError(LabwrightError):
    """The protocol has errors; `diagnostics` lists every one (and the warnings)."""

    def __init__(self, name: str, diagnostics: Sequence[Diagnostic]):
        errors = [d for d in diagnostics if d.severity == "error"]
        lines = "\n".join(f"  {name}:{d}" for d in errors)
        super().__init__(f"{name} has {len(errors)} error(s):\n{lines}", "INVALID_ARGUMENT")
        self.diagnostics = list(diagnostics)


class RunFailed(LabwrightError):
    """A run ended without succeeding; `run` is it, its `reason` says why."""

    def __init__(self, run: "Run"):
        super().__init__(f"run {run.id} {run.state}: {run.reason}", "FAILED_PRECONDITION")
        self.run = run


@dataclass(frozen=True)
class Validation:
    """A protocol that compiles: its size, and any warnings."""

    tasks: int
    commands: int
    warnings: list[Diagnostic] = field(default_factory=list)


@dataclass(frozen=True)
class Quote:
    """What a run would take and cost on this lab."""

    duration_s: float
    plate_moves: int
    lines: list[dict]
    per_run: float
    total: float
    currency: str
    validation: Validation
    # Labware the run uses up and reagents the lab pours for it: item, unit, quantity, price, amount.
    consumables: list[dict]
    # The service class priced (standard, priority or spot) and, planned behind today's queue,
    # when the lab would promise it if submitted now (Unix ms; 0 for spot, promised nothing).
    service_class: str = "standard"
    promised_by_at_ms: int = 0
    # A class sold with a turnaround (the site's [prices.turnaround]): that target in device
    # seconds from now (0 for none), and whether the lab can finish within it now.
    turnaround_target_s: float = 0.0
    meets_target: bool = False


def _diagnostics(pb: Sequence[Any]) -> list[Diagnostic]:
    names = {protocols_pb2.SEVERITY_ERROR: "error", protocols_pb2.SEVERITY_WARNING: "warning"}
    return [
        Diagnostic(d.code, names.get(d.severity, "error"), d.message, d.line, d.column, d.hint) for d in pb
    ]


def _source(protocol: Protocol) -> tuple[str, bytes]:
    """(file name, bytes) of a protocol given as a path or a dict."""
    if isinstance(protocol, Mapping):
        return "protocol.json", json.dumps(protocol).encode()
    path = pathlib.Path(protocol)
    if path.suffix == ".py":
        raise ValueError(
            f"{path} is an Opentrons Python protocol: submit it with `labctl submit {path}`, which runs Opentrons' analyzer first"
        )
    return path.name, path.read_bytes()


class Lab:
    """A connection to a Labwright lab as one tenant (or staff): `Lab(url, token)`.

    `url` is labd's API (`http://host:port`, or `https://…` with TLS); both default to
    `LABWRIGHT_URL` and `LABWRIGHT_TOKEN`, as `labctl` does."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 30.0):
        url = url or os.environ.get("LABWRIGHT_URL") or "http://127.0.0.1:50051"
        token = token or os.environ.get("LABWRIGHT_TOKEN")
        if not token:
            raise LabwrightError("no token: pass Lab(url, token) or set LABWRIGHT_TOKEN", "UNAUTHENTICATED")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"url {url!r}: write http://host:port or https://host:port")
        target = f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
        if parsed.scheme == "https":
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.insecure_channel(target)
        self.url = url
        self._meta = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout_s
        self._protocols = protocols_pb2_grpc.ProtocolsStub(self._channel)
        self._runs = runs_pb2_grpc.RunsStub(self._channel)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._meta, timeout=self._timeout)
        except grpc.RpcError as e:
            raise LabwrightError(e.details() or str(e), e.code().name) from None

    def validate(self, protocol: Protocol) -> Validation:
        """Checks a protocol against this lab; raises `ProtocolError` with its diagnostics."""
        name, source = _source(protocol)
        resp = self._call(self._protocols.Validate, protocols_pb2.ValidateRequest(file_name=name, source=source))
        return self._validation(name, resp)

    @staticmethod
    def _validation(name: str, resp: Any) -> Validation:
        diags = _diagnostics(resp.diagnostics)
        if not resp.ok:
            raise ProtocolError(name, diags)
        return Validation(resp.tasks, resp.commands, [d for d in diags if d.severity == "warning"])

    def quote(self, protocol: Protocol, service_class: str = "standard") -> Quote:
        """Duration, device time and cost in a service class (standard, priority or spot);
        raises `ProtocolError` when the protocol has errors."""
        name, source = _source(protocol)
        request = protocols_pb2.ValidateRequest(file_name=name, source=source, service_class=service_class)
        resp = self._call(self._protocols.Quote, request)
        validation = self._validation(name, resp.validation)
        lines = [
            {"instrument_class": l.instrument_class, "hours": l.hours, "rate_per_hour": l.rate_per_hour, "amount": l.amount}
            for l in resp.lines
        ]
        consumables = [
            {"item": l.item, "unit": l.unit, "quantity": l.quantity, "price": l.price, "amount": l.amount}
            for l in resp.consumables
        ]
        return Quote(
            resp.duration_s,
            resp.plate_moves,
            lines,
            resp.per_run,
            resp.total,
            resp.currency,
            validation,
            consumables,
            resp.service_class,
            resp.promised_by_at_ms,
            resp.turnaround_target_s,
            resp.meets_target,
        )

    def submit(self, protocol: Protocol, key: str | None = None, service_class: str = "standard") -> "Run":
        """Submits a protocol as a run in a service class (standard; priority, planned ahead of
        standard work; spot, idle capacity only and promised nothing); `key` makes a retried
        submission return the same run."""
        name, source = _source(protocol)
        tasks = self.validate(protocol).tasks
        request = runs_pb2.SubmitRequest(
            file_name=name,
            source=source,
            idempotency_key=key or f"py-{uuid.uuid4()}",
            service_class=service_class,
        )
        resp = self._call(self._runs.Submit, request)
        if not resp.HasField("run"):
            raise ProtocolError(name, _diagnostics(resp.diagnostics))
        return Run(self, resp.run, tasks)

    def subscribe(self, mqtt: Mapping[str, Any], timeout_s: float = 30.0) -> "Subscription":
        """Your tenant's run events over MQTT from now on, with the `mqtt` credentials issued
        with your token (`labctl token create --format json`); see `labwright.mqtt`."""
        from .mqtt import Subscription

        return Subscription(mqtt, timeout_s)

    def run(self, run_id: str) -> "Run":
        """A run of yours by id (another tenant's run is `NOT_FOUND`, like one that does not exist)."""
        return Run(self, self._call(self._runs.Get, runs_pb2.GetRunRequest(run_id=run_id)))

    def runs(self, states: Sequence[str] = ()) -> list["Run"]:
        """Your runs in submission order, optionally only those in `states`."""
        out, token = [], ""
        while True:
            resp = self._call(
                self._runs.List, runs_pb2.ListRunsRequest(states=list(states), page_size=1000, page_token=token)
            )
            out.extend(Run(self, r) for r in resp.runs)
            token = resp.next_page_token
            if not token:
                return out


class Run:
    """One run: its state, its events as they happen, its results."""

    def __init__(self, lab: Lab, info: Any, tasks: int | None = None):
        self._lab = lab
        self._info = info
        self._tasks = tasks

    id = property(lambda self: self._info.id)
    name = property(lambda self: self._info.name)
    state = property(lambda self: self._info.state)
    reason = property(lambda self: self._info.reason)
    service_class = property(lambda self: self._info.service_class)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, {self.name!r}, state={self.state!r})"

    def refresh(self) -> "Run":
        self._info = self._lab._call(self._lab._runs.Get, runs_pb2.GetRunRequest(run_id=self.id))
        return self

    def events(self, after: int = 0) -> Iterator[dict]:
        """The run's events from `after` on, live until the run ends (gRPC Watch); each a dict
        of seq, at_ms, kind and payload."""
        request = runs_pb2.WatchRequest(run_id=self.id, after_seq=after)
        try:
            for e in self._lab._runs.Watch(request, metadata=self._lab._meta):
                yield {"seq": e.seq, "at_ms": e.at_ms, "kind": e.kind, "payload": json.loads(e.payload_json or "{}")}
        except grpc.RpcError as e:
            raise LabwrightError(e.details() or str(e), e.code().name) from None

    def wait(self, progress: bool = True, check: bool = True) -> "Run":
        """Follows the run to its end, drawing a progress bar of its tasks on stderr; raises
        `RunFailed` when it does not succeed (unless `check=False`)."""
        done: set[int] = set()
        for e in self.events():
            if e["kind"] == "task_finished":
                done.add(int(e["payload"].get("task", -1)))
            if progress:
                self._draw(len(done), e["kind"])
        self.refresh()
        if progress:
            self._draw(len(done), self.state)
            print(file=sys.stderr)
        if check and self.state != "succeeded":
            raise RunFailed(self)
        return self

    def _draw(self, done: int, what: str) -> None:
        total = self._tasks or max(done, 1)
        width = 30
        filled = min(width, round(width * done / total))
        bar = "#" * filled + "-" * (width - filled)
        print(f"\r{self.id} [{bar}] {done}/{self._tasks or '?'} tasks  {what:<20}", end="", file=sys.stderr, flush=True)

    def results(self) -> pd.DataFrame:
        """Every measured value, one row per well and wavelength, with the plate map's sample,
        group, role, replicate and concentration, and the samples shipped to the lab the well's
        contents came from with the container wells the run drew them from (columns:
        `RESULT_COLUMNS`)."""
        resp = self._lab._call(self._lab._runs.Results, runs_pb2.ResultsRequest(run_id=self.id))
        rows = []
        for r in resp.results:
            per = max(len(r.wavelengths_nm), 1) if r.kind == "absorbance" else 1
            read_at = pd.Timestamp(r.read_at_ms, unit="ms", tz="UTC")
            for i, well in enumerate(r.wells):
                d = r.design[i] if i < len(r.design) else None
                o = r.origins[i] if i < len(r.origins) else None
                samples = "; ".join(o.samples) if o is not None and o.samples else None
                wells_from = list(getattr(o, "from")) if o is not None else []  # `from` is a Python keyword
                drawn = "; ".join(wells_from) if wells_from else None
                mapped = d is not None and d.role != ""
                for k in range(per):
                    if r.kind == "absorbance":
                        wl = r.wavelengths_nm[k] if k < len(r.wavelengths_nm) else None
                    else:  # fluorescence: excitation, emission; the emission is what is read
                        wl = r.wavelengths_nm[1] if len(r.wavelengths_nm) > 1 else None
                    value = r.values[i * per + k] if i * per + k < len(r.values) else float("nan")
                    rows.append({
                        "run": self.id, "protocol": self.name, "result": r.id, "labware": r.labware,
                        "kind": r.kind, "well": well,
                        "sample": d.sample if mapped else None, "group": d.group if mapped else None,
                        "role": d.role if mapped else None, "replicate": d.replicate if mapped else None,
                        "concentration": d.concentration if mapped and d.HasField("concentration") else None,
                        "concentration_unit": d.concentration_unit if mapped and d.concentration_unit else None,
                        "wavelength_nm": wl, "value": value, "unit": r.unit, "read_at": read_at,
                        "source_samples": samples, "source_wells": drawn,
                    })
        return pd.DataFrame(rows, columns=RESULT_COLUMNS)

    def reads(self) -> list[tuple[str, str, str]]:
        """The run's reads in order: (result id, labware, kind)."""
        return _reads(self.results())

    def plate(self, read: int | str = 0, wavelength: float | None = None) -> pd.DataFrame:
        """One read as the plate looks: rows A, B, … by columns 1, 2, …; `read` is its position
        among the run's reads or its result id; `wavelength` picks one of an absorbance read's."""
        return plate_frame(self.results(), read, wavelength)

    def _repr_html_(self) -> str:
        self.refresh()
        head = f"<h4>{_esc(self.name)} <small>{_esc(self.id)} · {_esc(self.state)}</small></h4>"
        if self.state != "succeeded":
            return head + (f"<p>{_esc(self.reason)}</p>" if self.reason else "")
        frame = self.results()
        parts = [head]
        for n, (result, labware, kind) in enumerate(_reads(frame)):
            parts.append(plate_html(frame, result, f"read {n}: {kind} of {labware}"))
        return "\n".join(parts)


def _reads(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(frame[["result", "labware", "kind"]].drop_duplicates().itertuples(index=False, name=None))


def _esc(s: str) -> str:
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
