//! Minimal `--name value` argument parsing with clear errors.

use std::collections::HashMap;

pub struct Args {
    vals: HashMap<String, String>,
    flags: Vec<String>,
    pub positional: Vec<String>,
}

impl Args {
    /// `takes_value` lists the options that take a value; others are flags.
    pub fn parse(raw: &[String], takes_value: &[&str], flags: &[&str]) -> Result<Args, String> {
        let mut a = Args { vals: HashMap::new(), flags: Vec::new(), positional: Vec::new() };
        let mut it = raw.iter();
        while let Some(s) = it.next() {
            if let Some(name) = s.strip_prefix("--").or_else(|| s.strip_prefix('-').filter(|n| n.len() == 1)) {
                if takes_value.contains(&name) {
                    let v = it.next().ok_or_else(|| format!("option {s} needs a value"))?;
                    a.vals.insert(name.to_string(), v.clone());
                } else if flags.contains(&name) {
                    a.flags.push(name.to_string());
                } else {
                    return Err(format!("unknown option {s}"));
                }
            } else {
                a.positional.push(s.clone());
            }
        }
        Ok(a)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vals.get(name).map(String::as_str)
    }

    pub fn num(&self, name: &str) -> Result<Option<u64>, String> {
        self.vals.get(name).map(|_| self.num_or(name, 0)).transpose()
    }

    pub fn str_or(&self, name: &str, default: &str) -> String {
        self.vals.get(name).cloned().unwrap_or_else(|| default.to_string())
    }

    pub fn num_or(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.vals.get(name) {
            None => Ok(default),
            Some(v) => {
                parse_size(v).ok_or_else(|| format!("--{name}: {v:?} is not a number (suffixes K, M, G allowed)"))
            }
        }
    }
}

/// Parses "4096", "4K", "16M", "2G".
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}
