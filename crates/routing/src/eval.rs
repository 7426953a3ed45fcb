//! Scoring a labelled intent set: overall and per-capability accuracy and the confusion matrix,
//! printed as text (`atmosphere route --eval FILE`, the crate's accuracy test).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// One labelled intent (a JSON line: `{"text": ..., "capability": ...}`; other fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labelled {
    pub text: String,
    pub capability: String,
}

/// Parses JSON lines of labelled intents; the error names the line.
pub fn parse_jsonl(text: &str) -> Result<Vec<Labelled>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// Accuracy figures over (expected, predicted) pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub total: usize,
    pub correct: usize,
    /// capability → (correct, total)
    pub per_class: BTreeMap<String, (usize, usize)>,
    /// expected → predicted → count
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Report {
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut report = Self {
            total: 0,
            correct: 0,
            per_class: BTreeMap::new(),
            confusion: BTreeMap::new(),
        };
        for (expected, predicted) in pairs {
            report.total += 1;
            let class = report.per_class.entry(expected.to_owned()).or_default();
            class.1 += 1;
            if expected == predicted {
                report.correct += 1;
                class.0 += 1;
            }
            *report
                .confusion
                .entry(expected.to_owned())
                .or_default()
                .entry(predicted.to_owned())
                .or_default() += 1;
        }
        report
    }

    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.correct as f64 / self.total as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "accuracy {:.1}% ({}/{})",
            100.0 * self.accuracy(),
            self.correct,
            self.total
        )?;
        for (class, (correct, total)) in &self.per_class {
            writeln!(
                f,
                "  {class:<14} {:>5.1}% ({correct}/{total})",
                100.0 * *correct as f64 / (*total).max(1) as f64
            )?;
        }
        let mut columns: Vec<&String> =
            self.confusion.values().flat_map(|row| row.keys()).collect();
        columns.sort();
        columns.dedup();
        let mut header = format!("{:<14}", "expected\\got");
        for column in &columns {
            let _ = write!(header, " {:>6}", short(column));
        }
        writeln!(f, "{header}")?;
        for (expected, row) in &self.confusion {
            let mut line = format!("{:<14}", short(expected));
            for column in &columns {
                let _ = write!(line, " {:>6}", row.get(*column).copied().unwrap_or(0));
            }
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

fn short(name: &str) -> String {
    name.chars().take(6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_per_class_and_confusion_add_up() {
        let report = Report::new([("llm", "llm"), ("llm", "rag"), ("matter", "matter")]);
        assert_eq!((report.correct, report.total), (2, 3));
        assert_eq!(report.per_class["llm"], (1, 2));
        assert_eq!(report.confusion["llm"]["rag"], 1);
        let text = report.to_string();
        assert!(text.starts_with("accuracy 66.7% (2/3)"), "{text}");
        assert!(
            parse_jsonl("{\"text\":\"a\"}")
                .unwrap_err()
                .contains("line 1")
        );
        assert_eq!(
            parse_jsonl("{\"text\":\"a\",\"capability\":\"llm\",\"x\":1}\n\n")
                .unwrap()
                .len(),
            1
        );
    }
}
