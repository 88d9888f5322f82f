//! The shop solver: a greedy earliest-completion start, then tabu search on the disjunctive
//! graph with the N5 neighbourhood (swap the first or last two operations of critical blocks,
//! Nowicki & Smutnicki 1996), plus, for flexible instances, moves of a critical operation to
//! another of its machines. Anytime: it stops at a time or iteration budget and returns the best
//! schedule seen. Deterministic for a seed and an iteration budget.

use super::Instance;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A schedule: for every operation (jobs in order, operations in order) its machine and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopSchedule {
    pub machine: Vec<Vec<usize>>,
    pub start: Vec<Vec<u64>>,
    pub makespan: u64,
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub time: Option<Duration>,
    pub iterations: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub schedule: ShopSchedule,
    /// Makespan of the greedy start.
    pub initial_makespan: u64,
    pub time_to_first: Duration,
    pub iterations: u64,
}

/// A small, seedable random generator (xorshift64*), so runs are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator; seed 0 is mapped to a fixed non-zero state.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Flattened problem: operations numbered job by job.
struct Problem {
    n: usize,
    m: usize,
    job_prev: Vec<usize>,
    job_next: Vec<usize>,
    alts: Vec<Vec<(usize, u32)>>,
    first_of_job: Vec<usize>,
}

const NONE: usize = usize::MAX;

impl Problem {
    fn new(inst: &Instance) -> Problem {
        let n = inst.op_count();
        let mut p = Problem {
            n,
            m: inst.machines,
            job_prev: vec![NONE; n],
            job_next: vec![NONE; n],
            alts: Vec::with_capacity(n),
            first_of_job: Vec::new(),
        };
        let mut id = 0;
        for job in &inst.jobs {
            p.first_of_job.push(id);
            for (k, op) in job.iter().enumerate() {
                if k > 0 {
                    p.job_prev[id] = id - 1;
                    p.job_next[id - 1] = id;
                }
                p.alts.push(op.alts.clone());
                id += 1;
            }
        }
        p
    }
}

/// Machine assignment and sequences.
#[derive(Clone)]
struct Sol {
    mach: Vec<usize>,
    dur: Vec<u64>,
    seq: Vec<Vec<usize>>,
}

/// Reusable buffers for evaluating a solution.
struct Eval {
    mach_prev: Vec<usize>,
    mach_next: Vec<usize>,
    indeg: Vec<u32>,
    order: Vec<usize>,
    head: Vec<u64>,
    tail: Vec<u64>,
}

impl Eval {
    fn new(n: usize) -> Eval {
        Eval {
            mach_prev: vec![NONE; n],
            mach_next: vec![NONE; n],
            indeg: vec![0; n],
            order: Vec::with_capacity(n),
            head: vec![0; n],
            tail: vec![0; n],
        }
    }

    /// Heads, tails and makespan; `None` when the sequences make a cycle.
    fn run(&mut self, p: &Problem, s: &Sol, tails: bool) -> Option<u64> {
        for seq in &s.seq {
            for (i, &o) in seq.iter().enumerate() {
                self.mach_prev[o] = if i > 0 { seq[i - 1] } else { NONE };
                self.mach_next[o] = seq.get(i + 1).copied().unwrap_or(NONE);
            }
        }
        self.order.clear();
        for o in 0..p.n {
            self.indeg[o] = u32::from(p.job_prev[o] != NONE) + u32::from(self.mach_prev[o] != NONE);
            if self.indeg[o] == 0 {
                self.order.push(o);
            }
        }
        let mut i = 0;
        while i < self.order.len() {
            let o = self.order[i];
            i += 1;
            let jp = p.job_prev[o];
            let mp = self.mach_prev[o];
            let a = if jp != NONE { self.head[jp] + s.dur[jp] } else { 0 };
            let b = if mp != NONE { self.head[mp] + s.dur[mp] } else { 0 };
            self.head[o] = a.max(b);
            for nx in [p.job_next[o], self.mach_next[o]] {
                if nx != NONE {
                    self.indeg[nx] -= 1;
                    if self.indeg[nx] == 0 {
                        self.order.push(nx);
                    }
                }
            }
        }
        if self.order.len() != p.n {
            return None;
        }
        let makespan = (0..p.n).map(|o| self.head[o] + s.dur[o]).max().unwrap_or(0);
        if tails {
            for &o in self.order.iter().rev() {
                let jn = p.job_next[o];
                let mn = self.mach_next[o];
                let a = if jn != NONE { self.tail[jn] } else { 0 };
                let b = if mn != NONE { self.tail[mn] } else { 0 };
                self.tail[o] = s.dur[o] + a.max(b);
            }
        }
        Some(makespan)
    }
}

/// Greedy start: repeatedly schedule, among the next operation of every job and each of its
/// machines, the one that completes earliest (ties: most work remaining in the job).
fn greedy(p: &Problem) -> Sol {
    let mut sol = Sol { mach: vec![0; p.n], dur: vec![0; p.n], seq: vec![Vec::new(); p.m] };
    let mut mach_ready = vec![0u64; p.m];
    let mut next: Vec<usize> = p.first_of_job.clone();
    let mut job_ready = vec![0u64; next.len()];
    let min_d = |o: usize| p.alts[o].iter().map(|a| u64::from(a.1)).min().unwrap_or(0);
    let mut remaining: Vec<u64> = p
        .first_of_job
        .iter()
        .map(|&f| {
            let mut o = f;
            let mut w = 0;
            while o != NONE {
                w += min_d(o);
                o = p.job_next[o];
            }
            w
        })
        .collect();
    let mut left = p.n;
    while left > 0 {
        let mut best: Option<(u64, std::cmp::Reverse<u64>, usize, usize, u64)> = None;
        for (j, &o) in next.iter().enumerate() {
            if o == NONE {
                continue;
            }
            for &(m, d) in &p.alts[o] {
                let end = job_ready[j].max(mach_ready[m]) + u64::from(d);
                let key = (end, std::cmp::Reverse(remaining[j]), j, m, u64::from(d));
                if best.is_none_or(|b| (key.0, key.1, key.2) < (b.0, b.1, b.2)) {
                    best = Some(key);
                }
            }
        }
        let Some((end, _, j, m, d)) = best else { break };
        let o = next[j];
        sol.mach[o] = m;
        sol.dur[o] = d;
        sol.seq[m].push(o);
        mach_ready[m] = end;
        job_ready[j] = end;
        remaining[j] = remaining[j].saturating_sub(min_d(o));
        next[j] = p.job_next[o];
        left -= 1;
    }
    sol
}

/// One neighbourhood move.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// Swap two adjacent operations on a machine (u before v becomes v before u).
    Swap(usize, usize),
    /// Move an operation to another machine, at a position.
    Reassign { op: usize, machine: usize, dur: u64, pos: usize },
}

fn apply(s: &mut Sol, mv: Move) {
    match mv {
        Move::Swap(u, v) => {
            let m = s.mach[u];
            if let (Some(a), Some(b)) = (s.seq[m].iter().position(|&x| x == u), s.seq[m].iter().position(|&x| x == v)) {
                s.seq[m].swap(a, b);
            }
        }
        Move::Reassign { op, machine, dur, pos } => {
            let old = s.mach[op];
            s.seq[old].retain(|&x| x != op);
            let pos = pos.min(s.seq[machine].len());
            s.seq[machine].insert(pos, op);
            s.mach[op] = machine;
            s.dur[op] = dur;
        }
    }
}

/// Critical blocks of one critical path (chosen at random where there are several).
fn critical_blocks(p: &Problem, s: &Sol, e: &Eval, makespan: u64, rng: &mut Rng) -> Vec<Vec<usize>> {
    let ends: Vec<usize> = (0..p.n).filter(|&o| e.head[o] + s.dur[o] == makespan).collect();
    if ends.is_empty() {
        return Vec::new();
    }
    let mut cur = ends[rng.below(ends.len())];
    let mut path = vec![cur];
    loop {
        let start = e.head[cur];
        if start == 0 {
            break;
        }
        let mut cands = Vec::with_capacity(2);
        for pr in [p.job_prev[cur], e.mach_prev[cur]] {
            if pr != NONE && e.head[pr] + s.dur[pr] == start {
                cands.push(pr);
            }
        }
        if cands.is_empty() {
            break;
        }
        cur = cands[rng.below(cands.len())];
        path.push(cur);
    }
    path.reverse();
    let mut blocks: Vec<Vec<usize>> = Vec::new();
    for &o in &path {
        match blocks.last_mut() {
            Some(b) if b.last().is_some_and(|&l| e.mach_next[l] == o) => b.push(o),
            _ => blocks.push(vec![o]),
        }
    }
    blocks
}

fn neighbours(p: &Problem, s: &Sol, e: &Eval, blocks: &[Vec<usize>], rng: &mut Rng, out: &mut Vec<Move>) {
    out.clear();
    let k = blocks.len();
    for (i, b) in blocks.iter().enumerate() {
        if b.len() < 2 {
            continue;
        }
        // N5: not the first two of the first block, nor the last two of the last block (those
        // swaps cannot shorten the path); a lone block gets both.
        let first = i > 0 || k == 1;
        let last = i + 1 < k || k == 1;
        if first {
            out.push(Move::Swap(b[0], b[1]));
        }
        if last && !(first && b.len() == 2) {
            out.push(Move::Swap(b[b.len() - 2], b[b.len() - 1]));
        }
    }
    // Flexible instances: move a few critical operations to another machine, placed by start time.
    let flexible: Vec<usize> = blocks.iter().flatten().copied().filter(|&o| p.alts[o].len() > 1).collect();
    for _ in 0..flexible.len().min(6) {
        let op = flexible[rng.below(flexible.len())];
        let (m, d) = p.alts[op][rng.below(p.alts[op].len())];
        if m == s.mach[op] {
            continue;
        }
        let t = e.head[op];
        let pos = s.seq[m].iter().position(|&x| e.head[x] >= t).unwrap_or(s.seq[m].len());
        out.push(Move::Reassign { op, machine: m, dur: u64::from(d), pos });
    }
}

/// Estimated makespan after swapping `u` and its machine successor `v` (Taillard's estimate):
/// the longest paths through `u` and `v` after the swap, from the current heads and tails. Swaps
/// of adjacent critical operations never create a cycle, so no check is needed.
fn swap_estimate(p: &Problem, s: &Sol, e: &Eval, u: usize, v: usize) -> u64 {
    let end = |o: usize| if o == NONE { 0 } else { e.head[o] + s.dur[o] };
    let tail = |o: usize| if o == NONE { 0 } else { e.tail[o] };
    let rv = end(p.job_prev[v]).max(end(e.mach_prev[u]));
    let ru = end(p.job_prev[u]).max(rv + s.dur[v]);
    let qu = tail(p.job_next[u]).max(tail(e.mach_next[v])) + s.dur[u];
    let qv = tail(p.job_next[v]).max(qu) + s.dur[v];
    (rv + qv).max(ru + qu)
}

fn to_schedule(p: &Problem, inst: &Instance, s: &Sol, e: &mut Eval) -> ShopSchedule {
    let makespan = e.run(p, s, false).unwrap_or(0);
    let mut machine = Vec::new();
    let mut start = Vec::new();
    for (j, job) in inst.jobs.iter().enumerate() {
        let f = p.first_of_job[j];
        machine.push((0..job.len()).map(|k| s.mach[f + k]).collect());
        start.push((0..job.len()).map(|k| e.head[f + k]).collect());
    }
    ShopSchedule { machine, start, makespan }
}

/// Solves an instance within a budget.
pub fn solve(inst: &Instance, budget: Budget, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let p = Problem::new(inst);
    let mut rng = Rng::new(seed);
    let mut e = Eval::new(p.n);
    let mut cur = greedy(&p);
    let mut cur_ms = e.run(&p, &cur, true).unwrap_or(u64::MAX);
    let initial_makespan = cur_ms;
    let time_to_first = t0.elapsed();
    let mut best = cur.clone();
    let mut best_ms = cur_ms;
    let lb = inst.lower_bound();
    let mut tabu: HashMap<(usize, usize), u64> = HashMap::new();
    let base_tenure = 8 + (p.n as f64).sqrt() as u64 / 2;
    let mut moves = Vec::new();
    let mut trial = cur.clone();
    let mut it = 0u64;
    let mut stall = 0u64;
    let max_stall = 2_000 + 10 * p.n as u64;
    let out_of_budget =
        |it: u64| budget.iterations.is_some_and(|n| it >= n) || budget.time.is_some_and(|t| t0.elapsed() >= t);
    while best_ms > lb && !out_of_budget(it) && p.n > 1 {
        it += 1;
        let blocks = critical_blocks(&p, &cur, &e, cur_ms, &mut rng);
        neighbours(&p, &cur, &e, &blocks, &mut rng, &mut moves);
        let mut chosen: Option<(u64, Move)> = None;
        let mut fallback: Option<(u64, Move)> = None;
        // Swaps come first in `moves` and are estimated from the current heads and tails, before
        // any trial evaluation below overwrites them.
        for &mv in &moves {
            let ms = match mv {
                Move::Swap(u, v) => swap_estimate(&p, &cur, &e, u, v),
                Move::Reassign { .. } => {
                    trial.clone_from(&cur);
                    apply(&mut trial, mv);
                    let Some(ms) = e.run(&p, &trial, false) else { continue };
                    ms
                }
            };
            let is_tabu = match mv {
                Move::Swap(u, v) => tabu.get(&(u, v)).is_some_and(|&exp| exp > it),
                Move::Reassign { op, machine, .. } => {
                    tabu.get(&(op, usize::MAX - machine)).is_some_and(|&exp| exp > it)
                }
            };
            if !is_tabu || ms < best_ms {
                if chosen.is_none_or(|c| ms < c.0) {
                    chosen = Some((ms, mv));
                }
            } else if fallback.is_none_or(|c| ms < c.0) {
                fallback = Some((ms, mv));
            }
        }
        let Some((_, mv)) = chosen.or(fallback) else {
            // No move at all (a single-machine chain): nothing to improve.
            break;
        };
        let tenure = base_tenure + rng.below(base_tenure as usize / 2 + 1) as u64;
        match mv {
            Move::Swap(u, v) => {
                tabu.insert((v, u), it + tenure);
            }
            Move::Reassign { op, .. } => {
                tabu.insert((op, usize::MAX - cur.mach[op]), it + tenure);
            }
        }
        apply(&mut cur, mv);
        cur_ms = e.run(&p, &cur, true).unwrap_or(u64::MAX);
        if cur_ms < best_ms {
            best_ms = cur_ms;
            best.clone_from(&cur);
            stall = 0;
        } else {
            stall += 1;
        }
        if stall > max_stall {
            // Restart from the best with a few random critical swaps.
            cur.clone_from(&best);
            cur_ms = e.run(&p, &cur, true).unwrap_or(u64::MAX);
            for _ in 0..3 {
                let blocks = critical_blocks(&p, &cur, &e, cur_ms, &mut rng);
                let pairs: Vec<(usize, usize)> =
                    blocks.iter().flat_map(|b| b.windows(2).map(|w| (w[0], w[1]))).collect();
                if pairs.is_empty() {
                    break;
                }
                let (u, v) = pairs[rng.below(pairs.len())];
                apply(&mut cur, Move::Swap(u, v));
                cur_ms = e.run(&p, &cur, true).unwrap_or(u64::MAX);
            }
            tabu.clear();
            stall = 0;
        }
        if tabu.len() > 100_000 {
            tabu.retain(|_, &mut exp| exp > it);
        }
    }
    let schedule = to_schedule(&p, inst, &best, &mut e);
    Outcome { schedule, initial_makespan, time_to_first, iterations: it }
}

/// Checks a schedule against the instance without trusting the solver: every operation on one
/// of its machines, jobs in order, no two operations overlapping on a machine. Returns the
/// makespan.
pub fn verify(inst: &Instance, s: &ShopSchedule) -> Result<u64, String> {
    if s.start.len() != inst.jobs.len() || s.machine.len() != inst.jobs.len() {
        return Err("one row of starts and machines per job".into());
    }
    let mut on: Vec<Vec<(u64, u64, usize, usize)>> = vec![Vec::new(); inst.machines];
    let mut makespan = 0;
    for (j, job) in inst.jobs.iter().enumerate() {
        if s.start[j].len() != job.len() || s.machine[j].len() != job.len() {
            return Err(format!("job {j}: wrong number of operations"));
        }
        let mut ready = 0;
        for (k, op) in job.iter().enumerate() {
            let m = s.machine[j][k];
            let Some(&(_, d)) = op.alts.iter().find(|a| a.0 == m) else {
                return Err(format!("job {j} op {k}: machine {m} cannot run it"));
            };
            let st = s.start[j][k];
            if st < ready {
                return Err(format!("job {j} op {k}: starts at {st} before its predecessor ends at {ready}"));
            }
            ready = st + u64::from(d);
            makespan = makespan.max(ready);
            if let Some(row) = on.get_mut(m) {
                row.push((st, ready, j, k));
            }
        }
    }
    for (m, row) in on.iter_mut().enumerate() {
        row.sort_unstable();
        for w in row.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(format!("machine {m}: job {} op {} overlaps job {} op {}", w[0].2, w[0].3, w[1].2, w[1].3));
            }
        }
    }
    if makespan != s.makespan {
        return Err(format!("stated makespan {} but the schedule ends at {makespan}", s.makespan));
    }
    Ok(makespan)
}
