//! Classic shop scheduling: job shop (JSPLIB) and flexible job shop (Brandimarte, Hurink).
//!
//! The lab model reduces to these when there are no arms, nests or lags, so they are where the
//! solver core is measured against the best-known results of the literature (`schedbench`).
//! An operation has one or more alternative machines, each with its own duration; a job is an
//! ordered list of operations.

pub mod solve;

use std::fmt;

/// One operation: the machines that can run it, with their durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub alts: Vec<(usize, u32)>,
}

/// A (flexible) job-shop instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub machines: usize,
    pub jobs: Vec<Vec<Op>>,
}

/// An instance file that cannot be read, with the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Largest instance accepted, so a corrupt header cannot make us allocate without bound.
const MAX_OPS: usize = 1_000_000;

fn data_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i, l.split_whitespace().collect()))
}

fn num<T: std::str::FromStr>(tok: &str, line: usize, what: &str) -> Result<T, ParseError> {
    tok.parse().map_err(|_| ParseError { line, message: format!("{what}: `{tok}` is not a non-negative whole number") })
}

fn header<'a>(lines: &mut impl Iterator<Item = (usize, Vec<&'a str>)>) -> Result<(usize, usize, usize), ParseError> {
    let (ln, h) = lines.next().ok_or(ParseError { line: 1, message: "empty file: expected `jobs machines`".into() })?;
    if h.len() < 2 {
        return Err(ParseError { line: ln, message: "expected `jobs machines` on the first line".into() });
    }
    let n: usize = num(h[0], ln, "jobs")?;
    let m: usize = num(h[1], ln, "machines")?;
    if n == 0 || m == 0 || n.saturating_mul(m) > MAX_OPS {
        return Err(ParseError { line: ln, message: format!("{n} jobs on {m} machines is out of range") });
    }
    Ok((ln, n, m))
}

/// A machine number, checked against the header's machine count.
fn machine(tok: &str, line: usize, machines: usize) -> Result<usize, ParseError> {
    let m: usize = num(tok, line, "machine")?;
    if m >= machines {
        return Err(ParseError {
            line,
            message: format!("machine {m} does not exist (machines are 0 to {})", machines - 1),
        });
    }
    Ok(m)
}

/// The header, then one line per job read by `job(index, line number, tokens, machines)`.
fn parse_jobs(
    name: &str,
    text: &str,
    job: impl Fn(usize, usize, Vec<&str>, usize) -> Result<Vec<Op>, ParseError>,
) -> Result<Instance, ParseError> {
    let mut lines = data_lines(text);
    let (mut last, n, m) = header(&mut lines)?;
    let mut jobs = Vec::with_capacity(n.min(100_000));
    for j in 0..n {
        let (ln, toks) = lines
            .next()
            .ok_or(ParseError { line: last + 1, message: format!("job {j} is missing (the header says {n} jobs)") })?;
        last = ln;
        jobs.push(job(j, ln, toks, m)?);
    }
    Ok(Instance { name: name.to_string(), machines: m, jobs })
}

impl Instance {
    /// Total number of operations.
    pub fn op_count(&self) -> usize {
        self.jobs.iter().map(Vec::len).sum()
    }

    /// Reads a JSPLIB job-shop file: `n m`, then per job `m` pairs `machine duration` (machines from 0).
    pub fn parse_jsplib(name: &str, text: &str) -> Result<Instance, ParseError> {
        parse_jobs(name, text, |_, ln, toks, m| {
            if toks.len() % 2 != 0 || toks.is_empty() {
                return Err(ParseError { line: ln, message: "expected pairs of `machine duration`".into() });
            }
            toks.chunks(2).map(|p| Ok(Op { alts: vec![(machine(p[0], ln, m)?, num(p[1], ln, "duration")?)] })).collect()
        })
    }

    /// Reads a flexible job-shop file: `n m`, then per job `k` operations, each
    /// `count (machine duration)*count` (machines from 0).
    pub fn parse_fjsp(name: &str, text: &str) -> Result<Instance, ParseError> {
        parse_jobs(name, text, |j, ln, toks, m| {
            let mut it = toks.into_iter();
            let mut next = |what: &str| {
                it.next().ok_or(ParseError { line: ln, message: format!("job {j}: line ends early, expected {what}") })
            };
            let k: usize = num(next("the number of operations")?, ln, "the number of operations")?;
            let mut ops = Vec::with_capacity(k.min(10_000));
            for _ in 0..k {
                let c: usize = num(next("the number of machines of an operation")?, ln, "the number of machines")?;
                if c == 0 || c > m {
                    return Err(ParseError {
                        line: ln,
                        message: format!("job {j}: an operation with {c} alternative machines"),
                    });
                }
                let mut alts = Vec::with_capacity(c);
                for _ in 0..c {
                    let mach = machine(next("a machine")?, ln, m)?;
                    alts.push((mach, num(next("a duration")?, ln, "duration")?));
                }
                ops.push(Op { alts });
            }
            Ok(ops)
        })
    }

    /// A simple lower bound: the longest job (shortest alternatives) and the average machine load.
    pub fn lower_bound(&self) -> u64 {
        let min_d = |o: &Op| o.alts.iter().map(|a| u64::from(a.1)).min().unwrap_or(0);
        let job = self.jobs.iter().map(|j| j.iter().map(min_d).sum::<u64>()).max().unwrap_or(0);
        // Per machine: operations that can only run there.
        let mut fixed = vec![0u64; self.machines];
        let mut total = 0u64;
        for o in self.jobs.iter().flatten() {
            total += min_d(o);
            if let [(m, d)] = o.alts.as_slice() {
                fixed[*m] += u64::from(*d);
            }
        }
        let avg = total.div_ceil(self.machines as u64);
        job.max(avg).max(fixed.into_iter().max().unwrap_or(0))
    }
}
