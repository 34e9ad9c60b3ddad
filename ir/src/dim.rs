//! Symbolic dimensions: a dim is a constant, a named symbol (`batch`, `seq`, `past`), or a small
//! integer polynomial of them (`past + seq`, `seq - 1`), so one compiled graph serves every length.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Add, Mul, Sub};

/// Values bound to symbols at run time.
pub type DimEnv = BTreeMap<String, usize>;

/// An integer polynomial over named symbols, kept normalized (sorted monomials, no zero
/// coefficients) so that structural equality is mathematical equality.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Dim {
    /// (monomial as a sorted list of symbols, coefficient); the empty monomial is the constant.
    terms: Vec<(Vec<String>, i64)>,
}

/// A tensor shape whose dims may be symbolic.
pub type Shape = Vec<Dim>;

impl Dim {
    pub fn c(value: i64) -> Dim {
        Dim::from_terms(vec![(vec![], value)])
    }

    pub fn sym(name: &str) -> Dim {
        Dim::from_terms(vec![(vec![name.to_string()], 1)])
    }

    fn from_terms(terms: Vec<(Vec<String>, i64)>) -> Dim {
        let mut acc: BTreeMap<Vec<String>, i64> = BTreeMap::new();
        for (mut mono, coeff) in terms {
            mono.sort();
            *acc.entry(mono).or_insert(0) += coeff;
        }
        Dim {
            terms: acc.into_iter().filter(|(_, c)| *c != 0).collect(),
        }
    }

    /// The value when the dim has no symbols.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.as_slice() {
            [] => Some(0),
            [(mono, c)] if mono.is_empty() => Some(*c),
            _ => None,
        }
    }

    /// The polynomial's terms: (sorted symbols of the monomial — empty for the constant,
    /// coefficient). Code generators turn dims into arithmetic with them.
    pub fn terms(&self) -> impl Iterator<Item = (&[String], i64)> {
        self.terms.iter().map(|(m, c)| (m.as_slice(), *c))
    }

    /// The symbols this dim mentions.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms
            .iter()
            .flat_map(|(m, _)| m.iter().map(String::as_str))
    }

    /// Evaluates with every symbol bound; errors name the unbound symbol or a negative result.
    pub fn eval(&self, env: &DimEnv) -> Result<usize, String> {
        let mut total: i64 = 0;
        for (mono, coeff) in &self.terms {
            let mut v = *coeff;
            for s in mono {
                let b = env
                    .get(s)
                    .ok_or_else(|| format!("symbol `{s}` is not bound"))?;
                v *= *b as i64;
            }
            total += v;
        }
        usize::try_from(total).map_err(|_| format!("dim `{self}` evaluates to {total} < 0"))
    }

    /// Parses the text form printed by `Display`, e.g. `past + seq`, `2*heads*head_dim`, `seq - 1`.
    pub fn parse(text: &str) -> Result<Dim, String> {
        let mut terms = Vec::new();
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err("empty dim expression".into());
        }
        let mut sign = 1i64;
        if let Some(r) = rest.strip_prefix('-') {
            sign = -1;
            rest = r.trim_start();
        }
        loop {
            let end = rest.find(['+', '-']).unwrap_or(rest.len());
            let term = rest[..end].trim();
            let mut coeff = sign;
            let mut mono = Vec::new();
            for factor in term.split('*').map(str::trim) {
                if factor.is_empty() {
                    return Err(format!("malformed dim expression `{text}`"));
                }
                if let Ok(n) = factor.parse::<i64>() {
                    coeff *= n;
                } else if factor
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !factor.starts_with(|c: char| c.is_ascii_digit())
                {
                    mono.push(factor.to_string());
                } else {
                    return Err(format!("bad factor `{factor}` in dim expression `{text}`"));
                }
            }
            terms.push((mono, coeff));
            if end == rest.len() {
                break;
            }
            sign = if rest[end..].starts_with('-') { -1 } else { 1 };
            rest = &rest[end + 1..];
        }
        Ok(Dim::from_terms(terms))
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::c(v as i64)
    }
}

impl From<&str> for Dim {
    fn from(name: &str) -> Dim {
        Dim::sym(name)
    }
}

impl Add for Dim {
    type Output = Dim;
    fn add(self, rhs: Dim) -> Dim {
        Dim::from_terms(self.terms.into_iter().chain(rhs.terms).collect())
    }
}

impl Sub for Dim {
    type Output = Dim;
    fn sub(self, rhs: Dim) -> Dim {
        let neg = rhs.terms.into_iter().map(|(m, c)| (m, -c));
        Dim::from_terms(self.terms.into_iter().chain(neg).collect())
    }
}

impl Mul for Dim {
    type Output = Dim;
    fn mul(self, rhs: Dim) -> Dim {
        let mut terms = Vec::new();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &rhs.terms {
                terms.push((ma.iter().chain(mb).cloned().collect(), ca * cb));
            }
        }
        Dim::from_terms(terms)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Symbolic terms first (highest degree first), the constant last: `past + seq - 1`.
        let mut ordered: Vec<&(Vec<String>, i64)> = self.terms.iter().collect();
        ordered.sort_by_key(|(m, _)| (m.is_empty(), std::cmp::Reverse(m.len()), m.clone()));
        for (i, (mono, coeff)) in ordered.into_iter().enumerate() {
            let mag = coeff.unsigned_abs();
            match (i, *coeff < 0) {
                (0, true) => f.write_str("-")?,
                (0, false) => {}
                (_, true) => f.write_str(" - ")?,
                (_, false) => f.write_str(" + ")?,
            }
            if mono.is_empty() {
                write!(f, "{mag}")?;
            } else {
                if mag != 1 {
                    write!(f, "{mag}*")?;
                }
                f.write_str(&mono.join("*"))?;
            }
        }
        Ok(())
    }
}

impl Serialize for Dim {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_const() {
            Some(c) => s.serialize_i64(c),
            None => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dim, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Int(i64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Int(v) => Ok(Dim::c(v)),
            Repr::Text(t) => Dim::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Formats a shape as `[batch, seq, 64]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Evaluates every dim of a shape.
pub fn eval_shape(shape: &[Dim], env: &DimEnv) -> Result<Vec<usize>, String> {
    shape.iter().map(|d| d.eval(env)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn arithmetic_normalizes() {
        let d = Dim::sym("past") + Dim::sym("seq");
        assert_eq!(d, Dim::sym("seq") + Dim::sym("past"));
        assert_eq!(d.to_string(), "past + seq");
        assert_eq!((d.clone() - Dim::sym("past")), Dim::sym("seq"));
        assert_eq!((Dim::sym("seq") - Dim::c(1)).to_string(), "seq - 1");
        assert_eq!((Dim::c(4) * Dim::c(16)).as_const(), Some(64));
        assert_eq!(
            (Dim::sym("b") * Dim::sym("s") * Dim::c(2)).to_string(),
            "2*b*s"
        );
    }

    #[test]
    fn eval_binds_symbols() {
        let env: DimEnv = [("past".into(), 5), ("seq".into(), 3)].into();
        assert_eq!((Dim::sym("past") + Dim::sym("seq")).eval(&env), Ok(8));
        assert!(Dim::sym("batch").eval(&env).unwrap_err().contains("batch"));
        assert!((Dim::c(1) - Dim::sym("seq")).eval(&env).is_err());
    }

    #[test]
    fn serde_uses_numbers_and_text() {
        let shape = vec![
            Dim::sym("batch"),
            Dim::c(64),
            Dim::sym("past") + Dim::sym("seq"),
        ];
        let json = serde_json::to_string(&shape).unwrap();
        assert_eq!(json, r#"["batch",64,"past + seq"]"#);
        let back: Shape = serde_json::from_str(&json).unwrap();
        assert_eq!(back, shape);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(Dim::parse("").is_err());
        assert!(Dim::parse("a + + b").is_err());
        assert!(Dim::parse("a / b").is_err());
    }

    fn arb_dim() -> impl Strategy<Value = Dim> {
        let atom = prop_oneof![
            (-20i64..20).prop_map(Dim::c),
            prop::sample::select(vec!["batch", "seq", "past"]).prop_map(Dim::sym),
        ];
        atom.prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| a + b),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| a - b),
                (inner.clone(), inner).prop_map(|(a, b)| a * b),
            ]
        })
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(d in arb_dim()) {
            prop_assert_eq!(Dim::parse(&d.to_string()).unwrap(), d);
        }
    }
}
