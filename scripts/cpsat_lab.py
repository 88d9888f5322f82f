#!/usr/bin/env python3
"""Solve Labwright lab instances with OR-Tools CP-SAT, for a side-by-side with schedbench.

    schedbench --format lab M:1 --time-limit 10 --emit-instance /tmp/m1.json
    python3 scripts/cpsat_lab.py /tmp/m1.json --time-limit 10 --workers 2
    # seeded with Labwright's plan (a CP-SAT hint):
    schedbench --format lab M:1 --iterations 0 --emit-instance /tmp/m1.json --emit-schedule /tmp/m1.plan.json
    python3 scripts/cpsat_lab.py /tmp/m1.json --hint /tmp/m1.plan.json --time-limit 60
    python3 scripts/cpsat_lab.py /tmp/m1.json --hint /tmp/m1.plan.json --check-hint   # the hint is a plan here

The model is the same problem schedbench solves: each task on one of its candidate instruments,
its plates brought from storage and taken back by the arm legs of that instrument's route (one
move at a time per arm), the instrument occupied from the first plate's arrival until the
last plate's first leg away has ended (capacity), transfer stations held between legs, precedence, release times and
max lags. Two simplifications, both in CP-SAT's favour: times are in 0.1 s (durations rounded
down, maximum lags up), and batching by set points (one temperature per incubator at a time) is
not modelled. A hint values every variable but the makespan (derived), so CP-SAT starts from Labwright's whole plan.
"""
import argparse
import json
import math
import sys
import time

try:
    from ortools.sat.python import cp_model
except ImportError:
    sys.exit("needs OR-Tools: pip install ortools==9.15.6755")

SCALE = 10  # 0.1 s


def ticks(seconds):
    return int(round(seconds * SCALE))


def span(seconds):
    """A duration, rounded down: with start times rounded to the nearest tick, a plan whose every
    step follows the one before it stays such a plan in ticks (so Labwright's plan is a feasible
    hint), and the rounding favours CP-SAT."""
    return int(math.floor(seconds * SCALE + 1e-9))


def slack(seconds):
    """A maximum lag, rounded up (again in CP-SAT's favour)."""
    return int(math.ceil(seconds * SCALE - 1e-9))


def solve(inst, time_limit, workers, plan=None, check_hint=False):
    m = cp_model.CpModel()
    hints = []  # (var, value) from Labwright's plan
    horizon = 0
    for run in inst["runs"]:
        horizon = max(horizon, ticks(run["release"]))
    horizon += sum(
        ticks(t["duration"]) + 2 * sum(ticks(l["seconds"]) for c in t["candidates"][:1] for l in c["inbound"] + c["outbound"]) * max(1, len(t["plates"]))
        for run in inst["runs"]
        for t in run["tasks"]
    )
    arm_iv = [[] for _ in range(inst["arms"])]
    res_iv = [[] for _ in inst["resources"]]
    ends = []
    for r, run in enumerate(inst["runs"]):
        rel = ticks(run["release"])
        S, E = [], []
        # per task: list of (literal, {plate: (first inbound start var, last outbound end var)})
        plate_io = []
        for i, t in enumerate(run["tasks"]):
            d = span(t["duration"])
            s = m.NewIntVar(rel, horizon, f"s{r}_{i}")
            e = m.NewIntVar(rel, horizon, f"e{r}_{i}")
            m.Add(e == s + d)
            S.append(s)
            E.append(e)
            slot = plan["tasks"].get((r, i)) if plan else None
            # A complete hint: every variable but the makespan gets a value (CP-SAT repairs a near-feasible hint;
            # a partial one on hundreds of tasks it did not complete in 30 s).
            hs_val = ticks(slot["start"]) if slot else None
            if slot:
                hints.append((s, hs_val))
                hints.append((e, hs_val + d))
            ends.append(e)
            for a in t["after"]:
                m.Add(s >= E[a])
            io = []
            if t["arm_task"]:
                arm_iv[0].append(m.NewIntervalVar(s, d, e, f"lid{r}_{i}"))
            elif t["candidates"]:
                lits = []
                for c in t["candidates"]:
                    x = m.NewBoolVar(f"x{r}_{i}_{c['resource']}")
                    lits.append(x)
                    chosen = bool(slot) and slot.get("resource") == c["resource"]
                    if plan:
                        hints.append((x, int(chosen)))
                    arrive = m.NewIntVar(rel, horizon, "")
                    depart = m.NewIntVar(rel, horizon, "")
                    arrive_val = depart_val = None
                    if plan and hs_val is not None:
                        arrive_val, depart_val = hs_val, hs_val + d
                    m.Add(arrive <= s).OnlyEnforceIf(x)
                    m.Add(depart >= e).OnlyEnforceIf(x)
                    ports = {}
                    for p in t["plates"]:
                        if not c["inbound"] and not c["outbound"]:
                            continue
                        chain_in, chain_out = [], []
                        for direction, legs, chain in (("in", c["inbound"], chain_in), ("out", c["outbound"], chain_out)):
                            prev = None
                            for k, leg in enumerate(legs):
                                st = m.NewIntVar(rel, horizon, "")
                                du = span(leg["seconds"])
                                st_val = None
                                if chosen:
                                    mv = plan["legs"].get((r, p, i, direction, k))
                                    if mv is not None:
                                        st_val = ticks(mv)
                                elif plan and hs_val is not None:
                                    st_val = hs_val  # not used: any value satisfies its constraints
                                if st_val is not None:
                                    hints.append((st, st_val))
                                en = m.NewIntVar(rel, horizon, "")
                                if st_val is not None:
                                    hints.append((en, st_val + du))
                                iv = m.NewOptionalIntervalVar(st, du, en, x, "")
                                arm_iv[leg["arm"]].append(iv)
                                if prev is not None:
                                    m.Add(st >= prev[1]).OnlyEnforceIf(x)
                                    # The plate waits on the station between the legs.
                                    if prev[2] is not None:
                                        hs = prev[0]
                                        hold = m.NewIntVar(0, horizon, "")
                                        m.Add(hold == en - hs).OnlyEnforceIf(x)
                                        if st_val is not None and prev[3] is not None:
                                            hints.append((hold, max(0, st_val + du - prev[3])))
                                        res_iv[prev[2]].append((m.NewOptionalIntervalVar(hs, hold, en, x, ""), 1))
                                prev = (st, en, leg["station_after"], st_val)
                                if chosen and st_val is not None and arrive_val is not None:
                                    # Held from the first plate's arrival to the last one's departure.
                                    if direction == "in" and k == len(legs) - 1:
                                        arrive_val = min(arrive_val, st_val + du)
                                    elif direction == "out" and k == 0:
                                        depart_val = max(depart_val, st_val + du)
                                chain.append((st, en))
                        if chain_in:
                            m.Add(chain_in[-1][1] <= s).OnlyEnforceIf(x)
                            m.Add(arrive <= chain_in[-1][1]).OnlyEnforceIf(x)
                        if chain_out:
                            m.Add(chain_out[0][0] >= e).OnlyEnforceIf(x)
                            # Until the first leg away has lifted it off and ended.
                            m.Add(depart >= chain_out[0][1]).OnlyEnforceIf(x)
                            ends.append(chain_out[-1][1])
                        ports[p] = (chain_in[0][0] if chain_in else s, chain_out[-1][1] if chain_out else e)
                    size = m.NewIntVar(0, horizon, "")
                    m.Add(size == depart - arrive).OnlyEnforceIf(x)
                    if arrive_val is not None:
                        hints.append((arrive, arrive_val))
                        hints.append((depart, depart_val))
                        hints.append((size, max(0, depart_val - arrive_val)))
                    res_iv[c["resource"]].append((m.NewOptionalIntervalVar(arrive, size, depart, x, ""), 1))
                    io.append((x, ports))
                m.AddExactlyOne(lits)
            plate_io.append(io)
        # A plate is in one place: the next task that uses it fetches it after the last one
        # brought it home.
        for p in range(run["plates"]):
            users = [i for i, t in enumerate(run["tasks"]) if p in t["plates"]]
            for a, b in zip(users, users[1:]):
                for xa, pa in plate_io[a]:
                    for xb, pb in plate_io[b]:
                        if p in pa and p in pb:
                            m.Add(pb[p][0] >= pa[p][1]).OnlyEnforceIf([xa, xb])
        for f, t, mx in run["max_lags"]:
            m.Add(S[t] - E[f] <= slack(mx))
    for ivs in arm_iv:
        m.AddNoOverlap(ivs)
    for k, ivs in enumerate(res_iv):
        if ivs:
            m.AddCumulative([iv for iv, _ in ivs], [dem for _, dem in ivs], inst["resources"][k]["capacity"])
    mk = m.NewIntVar(0, horizon, "makespan")
    m.AddMaxEquality(mk, ends)
    m.Minimize(mk)
    for var, val in hints:
        m.AddHint(var, val)
    solver = cp_model.CpSolver()
    if plan:
        solver.parameters.repair_hint = not check_hint
        # Every variable held at its hinted value: a feasible answer proves the hint is a plan.
        solver.parameters.fix_variables_to_their_hinted_value = check_hint
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = workers
    t0 = time.time()
    status = solver.Solve(m)
    took = time.time() - t0
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    return {
        "instance": inst["instance"],
        "status": solver.StatusName(status),
        "makespan": solver.Value(mk) / SCALE if found else None,
        "bound": solver.BestObjectiveBound() / SCALE,
        "labwright_lower_bound": inst["lower_bound"],
        "hinted": plan is not None,
        "seconds": round(took, 3),
    }


def load_plan(inst, path):
    """Labwright's schedule (schedbench --emit-schedule) as hints: per task its instrument and
    start, per plate its legs in order (plates go home after every task, so a plate's moves are
    its tasks' inbound and outbound legs, task after task)."""
    data = json.load(open(path))
    plans = data if isinstance(data, list) else [data]
    plan = next((p for p in plans if p["instance"] == inst["instance"]), None)
    if plan is None:
        return None
    res_index = {r["id"]: k for k, r in enumerate(inst["resources"])}
    run_index = {run["id"]: k for k, run in enumerate(inst["runs"])}
    tasks, moves = {}, {}
    for row in plan["tasks"]:
        r = run_index[row["run"]]
        if "move" in row:
            moves.setdefault((r, int(row["move"].removeprefix("plate"))), []).append(row["start"])
        else:
            tasks[(r, row["task"])] = {"resource": res_index.get(row["instance"]), "start": row["start"]}
    legs = {}
    for (r, p), starts in moves.items():
        starts.sort()
        k = 0
        for i, t in enumerate(inst["runs"][r]["tasks"]):
            if p not in t["plates"] or not t["candidates"]:
                continue
            chosen = next((c for c in t["candidates"] if c["resource"] == tasks.get((r, i), {}).get("resource")), None)
            if chosen is None:
                continue
            for direction in ("in", "out"):
                for j in range(len(chosen["inbound" if direction == "in" else "outbound"])):
                    if k < len(starts):
                        legs[(r, p, i, direction, j)] = starts[k]
                    k += 1
    return {"tasks": tasks, "legs": legs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="instances written by schedbench --emit-instance")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hint", help="Labwright's schedule (schedbench --emit-schedule) to seed CP-SAT with")
    ap.add_argument("--check-hint", action="store_true", help="only check that the hint is a feasible plan here")
    a = ap.parse_args()
    for inst in json.load(open(a.file)):
        plan = load_plan(inst, a.hint) if a.hint else None
        print(json.dumps(solve(inst, a.time_limit, a.workers, plan, a.check_hint and plan is not None)), flush=True)


if __name__ == "__main__":
    main()
