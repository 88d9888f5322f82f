//! Curve fits: a straight line for standard curves, the four-parameter logistic for
//! dose-response, each with standard errors, 95 % confidence intervals and R². The logistic is
//! fitted by Levenberg–Marquardt (the `levenberg-marquardt` crate); its standard errors are
//! those of the Gauss–Newton covariance `s² (JᵀJ)⁻¹` with `s² = RSS / (n − p)`, as SciPy's
//! `curve_fit` reports them.

use levenberg_marquardt::{LeastSquaresProblem, LevenbergMarquardt};
use nalgebra::{storage::Owned, DMatrix, DVector, Dyn, OMatrix, OVector, U4};
use serde::Serialize;

/// A parameter's estimate, standard error and 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub se: f64,
    pub ci95: (f64, f64),
}

impl Estimate {
    fn new(value: f64, se: f64, t: f64) -> Estimate {
        Estimate { value, se, ci95: (value - t * se, value + t * se) }
    }
}

/// `y = intercept + slope · x`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub intercept: Estimate,
    pub slope: Estimate,
    pub r_squared: f64,
    pub n: usize,
}

impl Line {
    /// The `x` that gives `y` (a concentration from a reading).
    pub fn solve(&self, y: f64) -> f64 {
        (y - self.intercept.value) / self.slope.value
    }
}

/// Why a fit has no result.
#[derive(Debug, Clone, PartialEq)]
pub enum FitError {
    TooFew { need: usize, have: usize },
    Flat,
    NoConvergence(String),
}

impl std::error::Error for FitError {}

impl std::fmt::Display for FitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FitError::TooFew { need, have } => write!(f, "{have} points; a fit needs at least {need}"),
            FitError::Flat => write!(f, "the points do not vary (nothing to fit)"),
            FitError::NoConvergence(why) => write!(f, "the fit did not converge ({why})"),
        }
    }
}

/// Least-squares straight line.
pub fn line(points: &[(f64, f64)]) -> Result<Line, FitError> {
    let n = points.len();
    if n < 3 {
        return Err(FitError::TooFew { need: 3, have: n });
    }
    let nf = n as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx <= 0.0 || syy <= 0.0 {
        return Err(FitError::Flat);
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let rss: f64 = points.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
    let s2 = rss / (nf - 2.0);
    let t = t_quantile_975(n - 2);
    Ok(Line {
        intercept: Estimate::new(intercept, (s2 * (1.0 / nf + mx * mx / sxx)).sqrt(), t),
        slope: Estimate::new(slope, (s2 / sxx).sqrt(), t),
        r_squared: 1.0 - rss / syy,
        n,
    })
}

/// The four-parameter logistic `y = bottom + (top − bottom) / (1 + (ec50 / x)^hill)`:
/// `bottom` is the response at low concentration, `top` at high; `hill` > 0. A response that
/// falls with concentration has `top` < `bottom`, and its `ec50` is an IC50.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logistic {
    pub bottom: Estimate,
    pub top: Estimate,
    pub ec50: Estimate,
    pub hill: Estimate,
    pub r_squared: f64,
    pub n: usize,
    /// `IC50` when the response falls with concentration, else `EC50`.
    pub midpoint: &'static str,
}

/// The logistic's value at `x`.
pub fn logistic(p: [f64; 4], x: f64) -> f64 {
    let [bottom, top, ec50, hill] = p;
    bottom + (top - bottom) / (1.0 + (ec50 / x).powf(hill))
}

impl Logistic {
    pub fn at(&self, x: f64) -> f64 {
        logistic([self.bottom.value, self.top.value, self.ec50.value, self.hill.value], x)
    }
}

/// The starting point both this fit and a reference fit use: the response at the lowest and
/// highest concentration, the concentration nearest the middle response, slope 1.
pub fn initial_guess(points: &[(f64, f64)]) -> [f64; 4] {
    let mut sorted: Vec<(f64, f64)> = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mean_at = |x: f64| {
        let ys: Vec<f64> = sorted.iter().filter(|p| p.0 == x).map(|p| p.1).collect();
        ys.iter().sum::<f64>() / ys.len() as f64
    };
    let (lo, hi) = (sorted[0].0, sorted[sorted.len() - 1].0);
    let (bottom, top) = (mean_at(lo), mean_at(hi));
    let middle = (bottom + top) / 2.0;
    let ec50 = sorted.iter().min_by(|a, b| (a.1 - middle).abs().total_cmp(&(b.1 - middle).abs())).map_or(lo, |p| p.0);
    [bottom, top, ec50, 1.0]
}

/// Fits the logistic to (concentration, response) points; concentrations must be positive.
pub fn four_pl(points: &[(f64, f64)]) -> Result<Logistic, FitError> {
    let points: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 > 0.0 && p.1.is_finite()).collect();
    let n = points.len();
    if n < 5 {
        return Err(FitError::TooFew { need: 5, have: n });
    }
    let my = points.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let tss: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if tss <= 0.0 {
        return Err(FitError::Flat);
    }
    let [b, t, e, h] = initial_guess(&points);
    // EC50 is fitted as its logarithm (it stays positive); the covariance is carried back.
    let problem = Problem { points: points.clone(), p: OVector::<f64, U4>::new(b, t, e.ln(), h) };
    let (done, report) = LevenbergMarquardt::new().with_patience(200).minimize(problem);
    if !report.termination.was_successful() {
        return Err(FitError::NoConvergence(format!("{:?}", report.termination)));
    }
    let p = done.p;
    let params = [p[0], p[1], p[2].exp(), p[3]];
    if params.iter().any(|v| !v.is_finite()) {
        return Err(FitError::NoConvergence("a parameter is not finite".into()));
    }
    let rss: f64 = points.iter().map(|&(x, y)| (y - logistic(params, x)).powi(2)).sum();
    let dof = n - 4;
    let s2 = rss / dof as f64;
    let j = done.jacobian().ok_or_else(|| FitError::NoConvergence("no Jacobian at the optimum".into()))?;
    let jtj: DMatrix<f64> = DMatrix::from_iterator(4, 4, (j.transpose() * &j).iter().copied());
    let cov = jtj.try_inverse().ok_or_else(|| FitError::NoConvergence("the parameters are not identifiable".into()))?;
    let se = |i: usize| (s2 * cov[(i, i)]).max(0.0).sqrt();
    let t95 = t_quantile_975(dof);
    // d ec50 = ec50 · d ln(ec50).
    let (mut hill, mut bottom, mut top) = (params[3], params[0], params[1]);
    let (mut se_b, mut se_t) = (se(0), se(1));
    if hill < 0.0 {
        // The same curve with the asymptotes named the other way round: keep hill > 0.
        hill = -hill;
        std::mem::swap(&mut bottom, &mut top);
        std::mem::swap(&mut se_b, &mut se_t);
    }
    Ok(Logistic {
        bottom: Estimate::new(bottom, se_b, t95),
        top: Estimate::new(top, se_t, t95),
        ec50: Estimate::new(params[2], params[2] * se(2), t95),
        hill: Estimate::new(hill, se(3), t95),
        r_squared: 1.0 - rss / tss,
        n,
        midpoint: if top < bottom { "IC50" } else { "EC50" },
    })
}

struct Problem {
    points: Vec<(f64, f64)>,
    /// bottom, top, ln(ec50), hill.
    p: OVector<f64, U4>,
}

impl LeastSquaresProblem<f64, Dyn, U4> for Problem {
    type ResidualStorage = Owned<f64, Dyn>;
    type JacobianStorage = Owned<f64, Dyn, U4>;
    type ParameterStorage = Owned<f64, U4>;

    fn set_params(&mut self, p: &OVector<f64, U4>) {
        self.p.copy_from(p);
    }

    fn params(&self) -> OVector<f64, U4> {
        self.p
    }

    fn residuals(&self) -> Option<OVector<f64, Dyn>> {
        let params = [self.p[0], self.p[1], self.p[2].exp(), self.p[3]];
        let r = DVector::from_iterator(self.points.len(), self.points.iter().map(|&(x, y)| logistic(params, x) - y));
        r.iter().all(|v| v.is_finite()).then_some(r)
    }

    fn jacobian(&self) -> Option<OMatrix<f64, Dyn, U4>> {
        let (b, t, ln_e, h) = (self.p[0], self.p[1], self.p[2], self.p[3]);
        let mut j = OMatrix::<f64, Dyn, U4>::zeros(self.points.len());
        for (i, &(x, _)) in self.points.iter().enumerate() {
            // u = (ec50/x)^h = exp(h (ln ec50 − ln x)); y = b + (t − b) / (1 + u).
            let u = (h * (ln_e - x.ln())).exp();
            let d = 1.0 + u;
            j[(i, 0)] = 1.0 - 1.0 / d;
            j[(i, 1)] = 1.0 / d;
            let dy_du = -(t - b) / (d * d);
            j[(i, 2)] = dy_du * u * h;
            j[(i, 3)] = dy_du * u * (ln_e - x.ln());
        }
        j.iter().all(|v| v.is_finite()).then_some(j)
    }
}

/// The two-sided 95 % quantile of Student's t with `dof` degrees of freedom (the `t` of a 95 %
/// confidence interval), by bisection on its distribution function.
pub fn t_quantile_975(dof: usize) -> f64 {
    if dof == 0 {
        return f64::INFINITY;
    }
    let nu = dof as f64;
    // P(T ≤ t) = 1 − ½ I_{ν/(ν+t²)}(ν/2, ½) for t ≥ 0.
    let cdf = |t: f64| 1.0 - 0.5 * incomplete_beta(nu / 2.0, 0.5, nu / (nu + t * t));
    let (mut lo, mut hi) = (0.0, 1000.0);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if cdf(mid) < 0.975 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The regularised incomplete beta function `I_x(a, b)` (continued fraction, as in Numerical
/// Recipes' `betai`).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_fraction(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < tiny { tiny } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < tiny { tiny } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) (Lanczos, g = 7, n = 9), accurate to about 1e-15 for x > 0.
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        for (dof, t) in [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (1000, 1.9623)] {
            assert!((t_quantile_975(dof) - t).abs() < 1e-4, "dof {dof}: {}", t_quantile_975(dof));
        }
    }

    #[test]
    fn a_line_through_exact_points() {
        let l = line(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)]).unwrap();
        assert!((l.slope.value - 2.0).abs() < 1e-12 && (l.intercept.value - 1.0).abs() < 1e-12);
        assert!((l.r_squared - 1.0).abs() < 1e-12 && (l.solve(4.0) - 1.5).abs() < 1e-12);
        assert_eq!(line(&[(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)]), Err(FitError::Flat));
    }

    #[test]
    fn a_logistic_is_recovered_and_named_by_its_direction() {
        let truth = [100.0, 5.0, 0.3, 1.4]; // falls with concentration: an IC50
        let xs: Vec<f64> = (0..10).map(|i| 10.0 / 3f64.powi(i)).collect();
        let pts: Vec<(f64, f64)> = xs.iter().map(|&x| (x, logistic(truth, x))).collect();
        let f = four_pl(&pts).unwrap();
        assert_eq!(f.midpoint, "IC50");
        assert!((f.ec50.value - 0.3).abs() < 1e-6 && (f.hill.value - 1.4).abs() < 1e-6, "{f:?}");
        assert!((f.bottom.value - 100.0).abs() < 1e-6 && (f.top.value - 5.0).abs() < 1e-6, "{f:?}");
        assert!(f.r_squared > 0.999_999);
    }
}
