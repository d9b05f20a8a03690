//! The redaction corpus (tests/fixtures/secrets/, made by scripts/gen_secret_corpus.py):
//! recall over realistic secrets and false positives over benign look-alikes, for the stack the
//! gateway runs (Redact then Entropy). Prints both figures.

use nenya::layers::{EntropyDetector, Redactor};

fn rows(name: &str) -> Vec<serde_json::Value> {
    let path = format!(
        "{}/tests/fixtures/secrets/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What the gateway forwards for `text`.
fn scrub(r: &Redactor, e: &EntropyDetector, text: &str) -> String {
    let once = r.redact(text).unwrap_or_else(|| text.to_string());
    e.redact(&once).unwrap_or(once)
}

#[test]
fn corpus_recall_and_false_positive_rate() {
    let r = Redactor::builtin();
    let e = EntropyDetector::default();
    let pos = rows("positives.jsonl");
    let neg = rows("negatives.jsonl");
    assert!(pos.len() >= 200 && neg.len() >= 1000);

    let mut missed = Vec::new();
    for row in &pos {
        let (text, secret) = (
            row["text"].as_str().unwrap(),
            row["secret"].as_str().unwrap(),
        );
        let out = scrub(&r, &e, text);
        // A secret is caught when no 8-byte piece of it survives.
        let leaked = secret
            .as_bytes()
            .windows(8.min(secret.len()))
            .any(|w| out.as_bytes().windows(w.len()).any(|o| o == w));
        if leaked {
            missed.push(format!("{}: {out}", row["kind"]));
        }
    }
    let mut flagged = Vec::new();
    for row in &neg {
        let text = row["text"].as_str().unwrap();
        let out = scrub(&r, &e, text);
        if out != text {
            flagged.push(format!("{}: {out}", row["kind"]));
        }
    }
    let recall = 1.0 - missed.len() as f64 / pos.len() as f64;
    let fpr = flagged.len() as f64 / neg.len() as f64;
    println!(
        "redaction corpus: recall {:.2}% ({}/{}), false-positive rate {:.2}% ({}/{})",
        recall * 100.0,
        pos.len() - missed.len(),
        pos.len(),
        fpr * 100.0,
        flagged.len(),
        neg.len()
    );
    for m in &missed {
        println!("MISSED {m}");
    }
    for f in &flagged {
        println!("FLAGGED {f}");
    }
    assert!(recall >= 0.99, "recall {recall}");
    assert!(fpr <= 0.005, "false-positive rate {fpr}");
}

#[test]
fn every_positive_kind_is_caught_by_a_pattern_alone() {
    // The entropy layer is a backstop; each corpus kind has a pattern of its own.
    let r = Redactor::builtin();
    let mut missed = std::collections::BTreeSet::new();
    for row in rows("positives.jsonl") {
        let (text, secret) = (
            row["text"].as_str().unwrap(),
            row["secret"].as_str().unwrap(),
        );
        let out = r.redact(text).unwrap_or_else(|| text.to_string());
        if out.contains(secret.lines().nth(1).unwrap_or(secret)) {
            missed.insert(row["kind"].as_str().unwrap().to_string());
        }
    }
    assert!(missed.is_empty(), "kinds missed by patterns: {missed:?}");
}
